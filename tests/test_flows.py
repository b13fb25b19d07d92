"""Tests for the inverse autoregressive flow posterior (jvae.distributions.flows)."""

from __future__ import annotations

import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from jvae.distributions.flows import IAFPosterior, IAFStep, input_degrees, made_apply, made_masks
from jvae.distributions.posteriors import GaussianPosterior

D = 4
FEATURES = 5
CONTEXT = 3
HIDDEN = (8, 6)
BATCH = 3
K = 2


def _normal(seed, shape):
  """Standard-normal float32 test inputs from NumPy (no per-shape JAX compilation)."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _made_params(seed, d=D, hidden=HIDDEN, context_dim=CONTEXT):
  """Random, non-zero MADE weights (no small init), for the mask tests."""
  shapes = {"input_kernel": (d, hidden[0]), "input_bias": (hidden[0],),
            "context_kernel": (context_dim, hidden[0])}
  for layer, (a, b) in enumerate(itertools.pairwise(hidden)):
    shapes[f"hidden_{layer}_kernel"] = (a, b)
    shapes[f"hidden_{layer}_bias"] = (b,)
  for head in ("m", "s"):
    shapes[f"{head}_kernel"] = (hidden[-1], d)
    shapes[f"{head}_bias"] = (d,)
  return {name: _normal(seed + i, shape) for i, (name, shape) in enumerate(shapes.items())}


def _perturb(params, seed, scale=0.3):
  """Adds Gaussian noise to every weight, so the flow steps are far from identity.

  (NumPy noise: eager jax.random per leaf shape costs seconds of compilation on CPU.)
  """
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: jnp.asarray(x + scale * rng.standard_normal(x.shape).astype(x.dtype)), params)


@functools.cache
def _model_and_params(num_steps, perturb=True):
  """An IAFPosterior, its init params (perturbed if asked) and features h; cached per config."""
  model = IAFPosterior(D, num_steps=num_steps, hidden=HIDDEN, context_dim=CONTEXT)
  h = jnp.asarray(np.random.default_rng(num_steps).standard_normal((BATCH, FEATURES)), jnp.float32)
  params = model.init(jax.random.key(num_steps), h)
  if perturb:
    params = _perturb(params, num_steps + 100)
  return model, params, h


def _allowed(reverse, d=D):
  """allowed[i, j]: output i may depend on input j (j strictly before i in the ordering)."""
  deg = input_degrees(d, reverse)
  return deg[None, :] < deg[:, None]


# ------------------------------------------------------------------------------------------------
# MADE masks.


@pytest.mark.parametrize("reverse", [False, True])
def test_input_degrees(reverse):
  deg = input_degrees(5, reverse)
  np.testing.assert_array_equal(deg, [5, 4, 3, 2, 1] if reverse else [1, 2, 3, 4, 5])


@pytest.mark.parametrize("reverse", [False, True])
def test_made_mask_connectivity(reverse):
  masks = made_masks(input_degrees(D, reverse), HIDDEN)
  assert [m.shape for m in masks] == [(D, 8), (8, 6), (6, D)]
  # (M₀ M₁ M_out)[j, i] counts the paths input j → output i; a path exists iff j is before i.
  paths = masks[0] @ masks[1] @ masks[2]
  np.testing.assert_array_equal(paths.T > 0, _allowed(reverse))


@pytest.mark.parametrize("reverse", [False, True])
def test_made_jacobian_is_autoregressive(reverse):
  masks = made_masks(input_degrees(D, reverse), HIDDEN)
  params = _made_params(1)
  context = _normal(2, (CONTEXT,))
  allowed = _allowed(reverse)
  zs = _normal(3, (3, D))  # several random points
  jac_fn = jax.jacfwd(lambda z: made_apply(params, masks, z, context))
  jms, jss = jax.jit(jax.vmap(jac_fn))(zs)
  for jac in (*np.asarray(jms), *np.asarray(jss)):
    np.testing.assert_array_equal(jac[~allowed], 0.0)
    # ... and every allowed connection is actually used (ELU' > 0, random weights).
    assert np.all(np.abs(jac[allowed]) > 0.0)


def test_made_apply_broadcasts_sample_and_batch_dims():
  masks = made_masks(input_degrees(D), HIDDEN)
  params = _made_params(1)
  z = _normal(2, (K, BATCH, D))
  c = _normal(3, (BATCH, CONTEXT))
  m, s = made_apply(params, masks, z, c)
  chex.assert_shape([m, s], (K, BATCH, D))
  m1, _ = made_apply(params, masks, z[1, 2], c[2])
  np.testing.assert_allclose(m[1, 2], m1, rtol=1e-5, atol=1e-6)


def test_made_masks_rejects_no_hidden_layer():
  with pytest.raises(ValueError):
    made_masks(input_degrees(D), ())


# ------------------------------------------------------------------------------------------------
# Shapes and the log-determinant.


def test_shapes():
  model, params, h = _model_and_params(2)
  q = model.apply(params, h)
  assert q.batch_shape == (BATCH,)
  assert q.event_shape == (D,)
  z, log_q = q.sample_and_log_prob(seed=jax.random.key(3), sample_shape=(K,))
  chex.assert_shape(z, (K, BATCH, D))
  chex.assert_shape(log_q, (K, BATCH))
  chex.assert_shape(q.log_prob(z), (K, BATCH))
  chex.assert_shape(q.log_prob(z[0]), (BATCH,))


def _full_map(q):
  """ε ↦ z as a function of standard-normal noise of shape (K, batch, d)."""
  loc, scale = q.distribution.loc, q.distribution.scale_diag
  return lambda eps: q.bijector.forward(loc + scale * eps)


@pytest.mark.parametrize("num_steps", [1, 2, 3])
def test_log_q_matches_autodiff_jacobian(num_steps):
  model, params, h = _model_and_params(num_steps)
  q = model.apply(params, h)
  key = jax.random.key(7)
  z, log_q = q.sample_and_log_prob(seed=key, sample_shape=(K,))
  # The base noise ε of the same draw (Transformed samples its base with the same key).
  x0 = q.distribution.sample(seed=key, sample_shape=(K,))
  eps = (x0 - q.distribution.loc) / q.distribution.scale_diag
  f = _full_map(q)
  np.testing.assert_allclose(f(eps), z, rtol=1e-5, atol=1e-5)

  jac = np.asarray(jax.jit(jax.jacfwd(f))(eps))  # (K, B, d, K, B, d)
  log_n = np.sum(jax.scipy.stats.norm.logpdf(np.asarray(eps)), -1)
  for k in range(K):
    for b in range(BATCH):
      sign, logdet = np.linalg.slogdet(jac[k, b, :, k, b, :])
      # Each factor is triangular with a positive diagonal (σ₀, then sigmoid gates): det > 0.
      assert sign == 1.0
      np.testing.assert_allclose(log_q[k, b], log_n[k, b] - logdet, rtol=1e-4, atol=1e-4)
      # Samples are independent across the sample and batch axes.
      off = jac[k, b].copy()
      off[:, k, b, :] = 0.0
      np.testing.assert_array_equal(off, 0.0)


def test_single_step_jacobian_is_lower_triangular():
  model, params, h = _model_and_params(1)
  q = model.apply(params, h)
  eps = _normal(5, (1, BATCH, D))
  jac = np.asarray(jax.jit(jax.jacfwd(_full_map(q)))(eps))
  for b in range(BATCH):
    block = jac[0, b, :, 0, b, :]
    np.testing.assert_array_equal(np.triu(block, 1), 0.0)  # ∂z_i/∂ε_j = 0 for j > i.
    assert np.all(np.abs(np.tril(block, -1))[np.tril_indices(D, -1)] > 0)


def test_each_step_is_triangular_in_its_own_ordering():
  # Step t uses the natural order for even t (lower-triangular Jacobian with diagonal σ_t) and the
  # reversed order for odd t (upper-triangular). Their composition is NOT triangular in general:
  # that is the point of reversing the order between steps, and is checked below too.
  model, params, h = _model_and_params(2)
  q = model.apply(params, h)
  steps = q.bijector.bijectors[::-1]  # Chain stores the last-applied step first.
  assert all(isinstance(s, IAFStep) for s in steps)
  x = _normal(8, (BATCH, D))
  for t, step in enumerate(steps):
    jac = np.asarray(jax.jit(jax.jacfwd(step.forward))(x))
    _, log_det = step.forward_and_log_det(x)
    for b in range(BATCH):
      block = jac[b, :, b, :]
      zero_part = np.triu(block, 1) if t % 2 == 0 else np.tril(block, -1)
      np.testing.assert_array_equal(zero_part, 0.0)
      np.testing.assert_allclose(np.sum(np.log(np.diag(block))), log_det[b], rtol=1e-5,
                                 atol=1e-5)
  full = np.asarray(jax.jit(jax.jacfwd(q.bijector.forward))(x))
  block = full[0, :, 0, :]
  assert np.max(np.abs(np.triu(block, 1))) > 1e-6
  assert np.max(np.abs(np.tril(block, -1))) > 1e-6


# ------------------------------------------------------------------------------------------------
# Reductions, inverse, numerics.


def test_zero_steps_is_exactly_gaussian_posterior():
  model, params, h = _model_and_params(0, perturb=False)
  gauss = GaussianPosterior(D)
  g_params = gauss.init(jax.random.key(11), h)
  # Same parameter structure for the base part: the flow's params are {"base": gaussian params}.
  assert jax.tree.structure(params) == jax.tree.structure({"params": {"base": g_params["params"]}})
  params = {"params": {"base": g_params["params"]}}
  key = jax.random.key(12)
  z, log_q = model.apply(params, h).sample_and_log_prob(seed=key, sample_shape=(K,))
  z_g, log_q_g = gauss.apply(g_params, h).sample_and_log_prob(seed=key, sample_shape=(K,))
  np.testing.assert_array_equal(z, z_g)
  np.testing.assert_array_equal(log_q, log_q_g)


@pytest.mark.parametrize("num_steps", [1, 2, 3])
def test_initial_flow_is_near_gaussian_base(num_steps):
  # Unperturbed init: small output weights, so each step is ≈ z' = sigmoid(b) z.
  model, params, h = _model_and_params(num_steps, perturb=False)
  q = model.apply(params, h)
  x = _normal(3, (BATCH, D))
  gate = jax.nn.sigmoid(model.forget_bias) ** num_steps
  np.testing.assert_allclose(q.bijector.forward(x), gate * x, atol=0.1)


@pytest.mark.parametrize("num_steps", [1, 2, 3])
def test_log_prob_through_inverse_matches_sample_and_log_prob(num_steps):
  model, params, h = _model_and_params(num_steps)
  q = model.apply(params, h)
  z, log_q = q.sample_and_log_prob(seed=jax.random.key(9), sample_shape=(K,))
  np.testing.assert_allclose(q.log_prob(z), log_q, rtol=1e-4, atol=1e-4)
  x0 = q.distribution.sample(seed=jax.random.key(9), sample_shape=(K,))
  x0_rec, _ = q.bijector.inverse_and_log_det(z)
  np.testing.assert_allclose(x0_rec, x0, rtol=1e-4, atol=1e-4)


def _floor_params(params):
  """Pins the base scale at its floor: softplus(−1e4) = 0 so σ₀ = min_scale."""
  params = jax.tree.map(lambda x: x, params)
  scale = params["params"]["base"]["scale"]
  scale["kernel"] = jnp.zeros_like(scale["kernel"])
  scale["bias"] = jnp.full_like(scale["bias"], -1e4)
  return params


def test_finite_at_scale_floor():
  model, params, h = _model_and_params(2)
  params = _floor_params(params)
  q = model.apply(params, h)
  np.testing.assert_allclose(q.distribution.scale_diag, model.min_scale, rtol=1e-6)
  z, log_q = q.sample_and_log_prob(seed=jax.random.key(1), sample_shape=(K,))
  assert np.all(np.isfinite(z)) and np.all(np.isfinite(log_q))
  # −Σ log σ₀ = +9.2 per dimension at the floor: log q is large and positive ...
  assert np.all(np.asarray(log_q) > D * -np.log(model.min_scale) - 15.0)
  # ... and the sequential inverse still agrees with it (inverting through σ₀ = 1e-4 costs
  # ~1e-3 relative precision on ε; a wrong log-det sign at the floor would be ~70 nats off).
  np.testing.assert_allclose(q.log_prob(z), log_q, atol=2e-2)


@pytest.mark.parametrize("through_inverse", [False, True])
def test_gradient_of_mean_log_q_is_finite(through_inverse):
  model, params, h = _model_and_params(2)
  z_ext = _normal(4, (K, BATCH, D))

  def loss(p):
    q = model.apply(p, h)
    if through_inverse:  # log q of an external z: reverse-mode through the fori_loop inverse.
      return jnp.mean(q.log_prob(z_ext))
    _, log_q = q.sample_and_log_prob(seed=jax.random.key(2), sample_shape=(K,))
    return jnp.mean(log_q)

  grads = jax.tree.map(np.asarray, jax.jit(jax.grad(loss))(params))
  for leaf in jax.tree.leaves(grads):
    assert np.all(np.isfinite(leaf))
  for name in ("base", "context", "step_0", "step_1"):
    total = sum(float(np.sum(np.abs(g))) for g in jax.tree.leaves(grads["params"][name]))
    assert total > 0.0, name


def test_without_context():
  model = IAFPosterior(D, num_steps=2, hidden=HIDDEN, context_dim=0)
  h = _normal(1, (BATCH, FEATURES))
  params = _perturb(model.init(jax.random.key(0), h), 2)
  assert "context" not in params["params"]
  assert "context_kernel" not in params["params"]["step_0"]
  q = model.apply(params, h)
  z, log_q = q.sample_and_log_prob(seed=jax.random.key(3), sample_shape=(K,))
  chex.assert_shape(z, (K, BATCH, D))
  np.testing.assert_allclose(q.log_prob(z), log_q, rtol=1e-4, atol=1e-4)


class JitTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(False, True)
  def test_jit_matches_eager(self, at_floor):
    model, params, h = _model_and_params(2)
    if at_floor:
      params = _floor_params(params)

    def fn(p, h, key):
      q = model.apply(p, h)
      z, log_q = q.sample_and_log_prob(seed=key, sample_shape=(K,))
      return z, log_q, q.log_prob(z)

    z, log_q, log_p = self.variant(fn)(params, h, jax.random.key(3))
    z_ref, log_q_ref, log_p_ref = fn(params, h, jax.random.key(3))
    for a in (z, log_q, log_p):
      assert np.all(np.isfinite(a))
    np.testing.assert_allclose(z, z_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_q, log_q_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(log_p, log_p_ref, rtol=1e-4, atol=1e-3)
