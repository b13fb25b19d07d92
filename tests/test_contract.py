"""A model written against jvae.LatentModel alone gets every objective, estimator and trainer.

``PlainLinearGaussian`` below is plain JAX: no Flax, no jvae base class, a dict of parameters.
It is the linear-Gaussian oracle model (z ~ N(0, I), x|z ~ N(Wz + b, s²I), q = N(Ax + c, diag σ²)),
so every value and gradient is checked against ``jvae.oracles.linear_gaussian_vae`` (a linen VAE)
with the same parameters and keys, and the bounds against the exact log p(x).
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jvae
from jvae import oracles

D, LATENT, BATCH = 5, 2, 4
NOISE = 0.8


def _normal_log_prob(z, loc, scale):
  return -0.5 * jnp.square((z - loc) / scale) - jnp.log(scale) - 0.5 * math.log(2 * math.pi)


class PlainLinearGaussian:
  """The linear-Gaussian model as a plain object meeting the jvae.LatentModel contract."""

  def init(self, key, batch):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"W": jax.random.normal(k1, (D, LATENT)), "b": jax.random.normal(k2, (D,)),
            "A": 0.3 * jax.random.normal(k3, (LATENT, D)), "c": jnp.zeros(LATENT),
            "log_scale": jnp.full((LATENT,), -0.5)}

  def _q(self, params, x):
    loc = x @ params["A"].T + params["c"]
    return loc, jnp.broadcast_to(jnp.exp(params["log_scale"]), loc.shape)

  def propose(self, params, key, batch, *, num_samples, density_params=None):
    x = batch.x if isinstance(batch, jvae.Batch) else batch
    loc, scale = self._q(params, x)
    z = loc + scale * jax.random.normal(key, (num_samples, *loc.shape))
    d_loc, d_scale = self._q(params if density_params is None else density_params, x)
    return jvae.Proposal(z, _normal_log_prob(z, d_loc, d_scale).sum(-1))

  def log_joint(self, params, batch, z):
    x = batch.x if isinstance(batch, jvae.Batch) else batch
    mean = z @ params["W"].T + params["b"]
    return jvae.Joint(_normal_log_prob(x, mean, NOISE).sum(-1),
                      _normal_log_prob(z, 0.0, 1.0).sum(-1))


def _linen_params(plain):
  """The same parameters in the tree of jvae.oracles.linear_gaussian_vae."""
  return {"params": {"encoder": {"A": plain["A"], "c": plain["c"],
                                 "log_scale": plain["log_scale"]},
                     "decoder": {"W": plain["W"], "b": plain["b"]}}}


def _plain_grads(linen_grads):
  g = linen_grads["params"]
  return {**g["encoder"], **g["decoder"]}


@pytest.fixture(scope="module")
def setup():
  model = PlainLinearGaussian()
  x = 2.0 * jax.random.normal(jax.random.key(1), (BATCH, D))
  params = model.init(jax.random.key(0), x)
  reference = oracles.linear_gaussian_vae(D, LATENT, noise_scale=NOISE)
  return model, params, x, reference, _linen_params(params)


def test_meets_the_protocol_structurally(setup):
  model = setup[0]
  assert isinstance(model, jvae.LatentModel)
  assert not isinstance(model, jvae.VAE)
  assert not isinstance(object(), jvae.LatentModel)


OBJECTIVES = {
    "elbo_sample": lambda m: jvae.elbo(m, kl="sample", num_samples=3),
    "elbo_stl": lambda m: jvae.elbo(m, kl="sample", estimator="stl", num_samples=3),
    "iwae": lambda m: jvae.iwae(m, num_samples=5),
    "iwae_stl": lambda m: jvae.iwae(m, num_samples=5, estimator="stl"),
    "iwae_dreg": lambda m: jvae.iwae(m, num_samples=5, estimator="dreg"),
    "renyi": lambda m: jvae.renyi(m, alpha=0.5, num_samples=4),
    "miwae_dreg": lambda m: jvae.miwae(m, num_groups=2, num_samples=3, estimator="dreg"),
    "ciwae": lambda m: jvae.ciwae(m, num_samples=3, elbo_weight=0.3),
    "piwae_dreg": lambda m: jvae.piwae(m, num_groups=2, num_samples=3, estimator="dreg"),
    "log_marginal": lambda m: jvae.log_marginal(m, num_samples=60, chunk_size=16),
}


# Every estimator path once under jit (the reparam IWAE and sampled ELBO are also covered by the
# exactness test below), two of them eagerly too.
CASES = [(name, True) for name in ("elbo_stl", "iwae_dreg", "renyi", "miwae_dreg", "ciwae",
                                   "piwae_dreg", "log_marginal")] + [("elbo_stl", False),
                                                                     ("iwae_dreg", False)]


@pytest.mark.parametrize("name, jit", CASES)
def test_values_and_gradients_equal_the_linen_model(setup, name, jit):
  """Same model, same parameters, same key: same bound and same gradient (float32 round-off)."""
  model, params, x, reference, ref_params = setup
  wrap = jax.jit if jit else (lambda f: f)
  f, g = wrap(OBJECTIVES[name](model)), wrap(OBJECTIVES[name](reference))
  key = jax.random.key(3)
  np.testing.assert_allclose(f(params, key, x), g(ref_params, key, x), rtol=1e-5, atol=1e-4)
  if name == "log_marginal":
    return
  grad_f = jax.grad(lambda p: jnp.sum(f(p, key, x)))(params)
  grad_g = _plain_grads(jax.grad(lambda p: jnp.sum(g(p, key, x)))(ref_params))
  for leaf in grad_f:
    np.testing.assert_allclose(grad_f[leaf], grad_g[leaf], rtol=1e-4, atol=1e-4, err_msg=leaf)


def test_bounds_are_exact_at_the_exact_posterior(setup):
  """With q = p(z|x) (diagonal here: WᵀW made diagonal) every log-weight is log p(x)."""
  model, params, x, reference, _ = setup
  q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(5), (D, LATENT)))
  params = {**params, "W": q * jnp.array([1.5, 0.7])}
  exact = oracles.exact_posterior_params(reference, _linen_params(params))["params"]["encoder"]
  exact_params = {**params, **exact}
  truth = oracles.exact_log_marginal(reference, _linen_params(exact_params), x)
  for name in ("elbo_sample", "iwae", "iwae_dreg", "log_marginal"):
    value = OBJECTIVES[name](model)(exact_params, jax.random.key(9), x)
    np.testing.assert_allclose(value, truth, rtol=1e-5, atol=1e-4, err_msg=name)


def test_analytic_kl_is_a_clear_error_without_a_closed_form(setup):
  model, params, x, _, _ = setup
  with pytest.raises(ValueError, match="kl='analytic' needs the closed-form"):
    jvae.elbo(model, kl="analytic")(params, jax.random.key(0), x)


def test_batch_pytree_is_accepted(setup):
  model, params, x, _, _ = setup
  f = jvae.iwae(model, num_samples=4)
  key = jax.random.key(2)
  np.testing.assert_array_equal(f(params, key, jvae.Batch(x)), f(params, key, x))


def test_split_log_weight_paths_carry_their_gradients(setup):
  """value: the total derivative; theta: z held fixed; phi: log p(x, ·) at stopped params."""
  model, params, x, _, _ = setup
  key = jax.random.key(4)

  def grads(path):
    def f(p):
      lw = jvae.sample_log_weights(model, p, key, x, 3, split=True)
      return jnp.sum(getattr(lw, path))
    return jax.grad(f)(params)

  value, theta, phi = grads("value"), grads("theta"), grads("phi")
  full = jax.grad(lambda p: jnp.sum(jvae.sample_log_weights(model, p, key, x, 3).value))(params)
  for leaf in params:
    np.testing.assert_allclose(value[leaf], full[leaf], rtol=1e-5, atol=1e-5, err_msg=leaf)
    np.testing.assert_allclose(theta[leaf] + phi[leaf], full[leaf], rtol=1e-5, atol=1e-5)
  # The decoder gets nothing through z in theta's path; the decoder gets nothing at all in phi's.
  for leaf in ("W", "b"):
    np.testing.assert_array_equal(phi[leaf], 0.0)
    assert np.any(theta[leaf] != 0.0)
  for leaf in ("A", "c", "log_scale"):
    np.testing.assert_array_equal(theta[leaf], 0.0)
    assert np.any(phi[leaf] != 0.0)


def test_trainer_and_fit_over_seeds(setup):
  """The trainer, evaluate and fit over two seeds run unchanged and raise the bound."""
  model, _, _, _, _ = setup
  data = 2.0 * jax.random.normal(jax.random.key(11), (64, D)) + 1.0
  bound = jvae.iwae(model, num_samples=4)
  trainer = jvae.trainer(bound, optax.adam(3e-2), batch_size=16)
  state = jvae.fit_init(model, trainer, jvae.seed_keys(0, 2), data[:2])
  before = jax.vmap(lambda p: jvae.evaluate(bound, p, jax.random.key(0), data))(
      state.train.params)
  state, history = jvae.fit(trainer, state, data, data, epochs=12, valid_bound=bound)
  after = jax.vmap(lambda p: jvae.evaluate(bound, p, jax.random.key(0), data))(state.best_params)
  chex.assert_shape(after, (2,))
  assert len(history) == 12
  assert np.all(np.asarray(after) > np.asarray(before) + 1.0), (before, after)


def test_kl_groups_metric_sums_to_the_kl_and_evaluate_averages_it():
  """Per-dimension closed form for a VAE; per-layer sampled KL for a hierarchy; evaluate's mean."""
  x = (jax.random.uniform(jax.random.key(0), (7, 16)) < 0.4).astype(jnp.float32)
  vae = jvae.mlp_vae(event_shape=(16,), latent_dim=3, hidden=(8,))
  params = vae.init(jax.random.key(1), x)
  groups = jax.jit(jvae.kl_groups(vae))(params, jax.random.key(2), x)
  chex.assert_shape(groups, (7, 3))
  q = vae.apply(params, x, method=jvae.VAE.encode)
  np.testing.assert_allclose(groups.sum(-1), jvae.analytic_kl(q, jvae.standard_normal(3)),
                             rtol=1e-5)
  # evaluate: the mean over all 7 examples with batches of 3 (one padded), per group.
  mean = jax.jit(lambda p, k: jvae.evaluate(jvae.kl_groups(vae), p, k, x, batch_size=3))(
      params, jax.random.key(2))
  np.testing.assert_allclose(mean, groups.mean(0), rtol=1e-5)

  deep = jvae.burda2015_2layer(event_shape=(16,), hidden=((8,), (8,)), latent_dims=(4, 2))
  params = deep.init(jax.random.key(1), x)
  key = jax.random.key(5)
  groups = jax.jit(jvae.kl_groups(deep, num_samples=4))(params, key, x)
  chex.assert_shape(groups, (7, 2))

  @jax.jit
  def by_hand(params, key):
    proposal = deep.propose(params, key, x, num_samples=4)
    return jnp.mean(proposal.log_q - deep.log_joint(params, x, proposal.z).log_prior, 0)

  np.testing.assert_allclose(groups.sum(-1), by_hand(params, key), rtol=1e-5, atol=1e-5)
