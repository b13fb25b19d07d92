"""Objectives f(params, key, x) -> Array[batch] checked against the exact linear-Gaussian oracle."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import jvae
from jvae import oracles

D, LATENT, BATCH = 6, 3, 4


def _setup(full_cov):
  model = oracles.linear_gaussian_vae(D, LATENT, noise_scale=0.8, full_cov=full_cov)
  x = 2.0 * jax.random.normal(jax.random.key(1), (BATCH, D))
  params = model.init(jax.random.key(0), x)
  return model, params, x


def _overdispersed(model, params):
  """A mismatched but well-behaved q: the exact posterior shifted by 0.3 and widened by 1.4x.

  Importance weights then have finite variance (q's tails are heavier than p(z|x)'s), the regime
  in which the delta-method standard error of log_marginal is meaningful.
  """
  exact = oracles.exact_posterior_params(model, params)
  enc = dict(exact["params"]["encoder"])
  enc["c"] = enc["c"] + 0.3
  enc["log_scale"] = enc["log_scale"] + jnp.log(1.4)
  return {"params": {**exact["params"], "encoder": enc}}


def _keys(n, seed=7):
  return jax.random.split(jax.random.key(seed), n)


class ExactPosteriorTest(chex.TestCase):
  """With q = p(z|x) every log-weight equals log p(x): the bounds are exact for every key."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(  # names, not reprs: test ids must match across xdist workers
      ("elbo_sample_1", lambda m: jvae.elbo(m, kl="sample")),
      ("elbo_sample_7", lambda m: jvae.elbo(m, kl="sample", num_samples=7)),
      ("iwae_5", lambda m: jvae.iwae(m, num_samples=5)),
      ("iwae_50_dreg", lambda m: jvae.iwae(m, num_samples=50, estimator="dreg")),
      ("log_marginal", lambda m: jvae.log_marginal(m, num_samples=300, chunk_size=64)),
  )
  def test_bound_equals_log_marginal(self, make):
    model, params, x = _setup(full_cov=True)
    exact_params = oracles.exact_posterior_params(model, params)
    f = self.variant(make(model))
    truth = oracles.exact_log_marginal(model, exact_params, x)
    for key in _keys(3):
      out = f(exact_params, key, x)
      chex.assert_shape(out, (BATCH,))
      # float32 round-off of log-weights of magnitude ~20.
      np.testing.assert_allclose(out, truth, rtol=1e-5, atol=1e-4)


def test_ordering_with_mismatched_posterior():
  """E[ELBO] < E[IWAE_5] < E[IWAE_50] <= log p(x) (Burda et al. 2015, Thm. 1)."""
  model, params, x = _setup(full_cov=False)
  truth = oracles.exact_log_marginal(model, params, x)
  keys = _keys(400)

  def mean_and_se(f):
    vals = jax.jit(jax.vmap(f, in_axes=(None, 0, None)))(params, keys, x)
    return vals.mean(0), vals.std(0) / np.sqrt(len(keys))

  e, e_se = mean_and_se(jvae.elbo(model, kl="sample"))
  i5, i5_se = mean_and_se(jvae.iwae(model, num_samples=5))
  i50, i50_se = mean_and_se(jvae.iwae(model, num_samples=50))
  # The gaps are many standard errors wide for this badly mismatched q.
  assert np.all(e + 3 * (e_se + i5_se) < i5), (e, i5)
  assert np.all(i5 + 3 * (i5_se + i50_se) < i50), (i5, i50)
  assert np.all(i50 <= truth + 3 * i50_se), (i50, truth)
  # The analytic-KL ELBO has the same expectation, and equals the closed form.
  ea, ea_se = mean_and_se(jvae.elbo(model))
  exact_elbo = oracles.exact_elbo(model, params, x)
  np.testing.assert_array_less(np.abs(ea - exact_elbo), 4 * ea_se + 1e-4)
  np.testing.assert_array_less(np.abs(e - exact_elbo), 4 * e_se + 1e-4)


def test_log_marginal_within_four_standard_errors():
  model, params, x = _setup(full_cov=True)
  params = _overdispersed(model, params)
  truth = oracles.exact_log_marginal(model, params, x)
  f = jax.jit(jvae.log_marginal(model, num_samples=5000, chunk_size=512, return_stderr=True))
  est, se = f(params, jax.random.key(3), x)
  chex.assert_shape([est, se], (BATCH,))
  np.testing.assert_array_less(np.abs(est - truth), 4 * se)
  assert np.all(se < 0.05)  # informative, not a vacuous SE


def test_log_marginal_stderr_matches_spread_over_keys():
  model, params, x = _setup(full_cov=True)
  params = _overdispersed(model, params)
  f = jax.jit(jvae.log_marginal(model, num_samples=2000, chunk_size=300, return_stderr=True))
  est, se = jax.vmap(lambda k: f(params, k, x))(_keys(60))
  # The delta-method SE agrees with the empirical spread of independent estimates (loose: the
  # spread of 60 draws and the heavy-ish tail of the weights make both noisy).
  ratio = np.asarray(est.std(0) / se.mean(0))
  assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio


def test_log_marginal_memory_does_not_grow_with_num_samples():
  model, params, x = _setup(full_cov=False)

  def temp_bytes(k):
    f = jax.jit(jvae.log_marginal(model, num_samples=k, chunk_size=100))
    return f.lower(params, jax.random.key(0), x).compile().memory_analysis().temp_size_in_bytes

  assert temp_bytes(20_000) <= temp_bytes(1_000) + 1024


def test_reparameterized_elbo_gradient_matches_closed_form():
  """Mean over fixed keys of ∇ MC-ELBO equals ∇ of the closed-form ELBO (value and gradient)."""
  model, params, x = _setup(full_cov=False)
  exact = jax.value_and_grad(lambda p: oracles.exact_elbo(model, p, x).sum())
  exact_val, exact_grad = exact(params)
  for kl in ("sample", "analytic"):
    f = jvae.elbo(model, kl=kl)
    loss = lambda p, k, f=f: f(p, k, x).sum()
    vg = jax.jit(jax.vmap(jax.value_and_grad(loss), in_axes=(None, 0)))
    vals, grads = vg(params, _keys(4000))
    np.testing.assert_allclose(vals.mean(), exact_val, atol=4 * vals.std() / np.sqrt(4000))
    for g_mc, g_exact in zip(jax.tree_util.tree_leaves(grads),
                             jax.tree_util.tree_leaves(exact_grad), strict=False):
      se = g_mc.std(0) / np.sqrt(g_mc.shape[0])
      # 5 standard errors per component, plus float32 slack for zero-variance components.
      np.testing.assert_array_less(np.abs(g_mc.mean(0) - g_exact), 5 * se + 1e-3)


def test_dreg_and_stl_values_equal_the_bound():
  model, params, x = _setup(full_cov=False)
  key = jax.random.key(5)
  ref = jvae.iwae(model, num_samples=8)(params, key, x)
  for est in ("stl", "dreg"):
    np.testing.assert_allclose(jvae.iwae(model, num_samples=8, estimator=est)(params, key, x), ref,
                               rtol=1e-6)
  np.testing.assert_allclose(jvae.elbo(model, kl="sample", estimator="stl")(params, key, x),
                             jvae.elbo(model, kl="sample")(params, key, x), rtol=1e-6)


class VmapTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_vmap_over_keys_equals_loop(self):
    model, params, x = _setup(full_cov=False)
    f = jvae.iwae(model, num_samples=4)
    keys = _keys(5)
    batched = self.variant(jax.vmap(f, in_axes=(None, 0, None)))(params, keys, x)
    looped = jnp.stack([f(params, k, x) for k in keys])
    np.testing.assert_allclose(batched, looped, rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_vmap_over_stacked_params_equals_loop_over_seeds(self):
    model = jvae.burda2015(event_shape=(12,), latent_dim=3)
    x = (jax.random.uniform(jax.random.key(1), (4, 12)) > 0.5).astype(jnp.float32)
    seeds = _keys(3, seed=11)
    stacked = jax.vmap(model.init, in_axes=(0, None))(seeds, x)
    f = jvae.elbo(model)
    loss = lambda p, k: -f(p, k, x).mean()
    vals, grads = self.variant(jax.vmap(jax.value_and_grad(loss)))(stacked, seeds)
    for i, seed in enumerate(seeds):
      p_i = model.init(seed, x)
      v_i, g_i = jax.value_and_grad(loss)(p_i, seed)
      np.testing.assert_allclose(vals[i], v_i, rtol=1e-5)
      chex.assert_trees_all_close(jax.tree_util.tree_map(lambda a, i=i: a[i], grads), g_i,
                                  rtol=1e-4, atol=1e-6)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))


def _extreme_params(model, x, logit):
  """Decoder logits of ±1e4 and encoder scales at the floor."""
  params = model.init(jax.random.key(0), x)
  p = jax.tree_util.tree_map(lambda a: a, params)
  head = p["params"]["decoder"]["head"]["logits"]
  head["kernel"] = jnp.zeros_like(head["kernel"])
  head["bias"] = jnp.full_like(head["bias"], logit)
  scale = p["params"]["encoder"]["head"]["scale"]
  scale["kernel"] = jnp.zeros_like(scale["kernel"])
  scale["bias"] = jnp.full_like(scale["bias"], -1e4)
  return p


@pytest.mark.parametrize("logit", [1e4, -1e4])
@pytest.mark.parametrize("make", [
    lambda m: jvae.elbo(m),
    lambda m: jvae.elbo(m, kl="sample", num_samples=2, estimator="stl"),
    lambda m: jvae.iwae(m, num_samples=4),
    lambda m: jvae.iwae(m, num_samples=4, estimator="dreg"),
    lambda m: jvae.log_marginal(m, num_samples=8, chunk_size=3),
])
def test_extreme_logits_and_floor_scales_are_finite(logit, make):
  model = jvae.burda2015(event_shape=(10,), latent_dim=2)
  x = (jnp.arange(30).reshape(3, 10) % 2).astype(jnp.float32)  # half the pixels are "wrong"
  params = _extreme_params(model, x, logit)
  f = make(model)
  val, grad = jax.value_and_grad(lambda p: f(p, jax.random.key(1), x).sum())(params)
  # 5 wrong pixels a row cost |logit| nats each: 3 rows · 5 pixels · 1e4.
  assert val == pytest.approx(-3 * 5 * abs(logit), rel=1e-2)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grad))


class BadInputTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.model = jvae.burda2015(event_shape=(10,), latent_dim=2)
    self.x = jnp.zeros((3, 10))
    self.params = self.model.init(jax.random.key(0), self.x)

  @parameterized.parameters(False, True)
  def test_wrong_trailing_shape(self, jit):
    f = jvae.iwae(self.model, num_samples=2)
    f = jax.jit(f) if jit else f
    with self.assertRaisesRegex(ValueError, r"x must have shape \(batch, 10\).*got \(3, 11\)"):
      f(self.params, jax.random.key(0), jnp.zeros((3, 11)))
    with self.assertRaisesRegex(ValueError, r"got \(10,\)"):
      f(self.params, jax.random.key(0), jnp.zeros((10,)))

  @parameterized.parameters(False, True)
  def test_non_key(self, jit):
    f = jvae.elbo(self.model)
    f = jax.jit(f) if jit else f
    for bad in (jnp.zeros(3), jnp.zeros((2,), jnp.int32), jax.random.split(jax.random.key(0), 2)):
      with self.assertRaisesRegex(TypeError, "key must be a single PRNG key.*got"):
        f(self.params, bad, self.x)
    f(self.params, jax.random.PRNGKey(0), self.x)  # raw uint32[2] keys are accepted

  def test_bad_num_samples(self):
    for make in (lambda k: jvae.elbo(self.model, num_samples=k),
                 lambda k: jvae.iwae(self.model, num_samples=k),
                 lambda k: jvae.log_marginal(self.model, num_samples=k)):
      for bad in (0, -3, 2.5):
        with self.assertRaisesRegex(ValueError, "num_samples must be an integer >= 1, got"):
          make(bad)

  def test_unknown_options(self):
    with self.assertRaisesRegex(ValueError, "unknown kl option 'exact'.*'analytic', 'sample'"):
      jvae.elbo(self.model, kl="exact")
    with self.assertRaisesRegex(ValueError, "unknown estimator 'reinforce'"):
      jvae.iwae(self.model, num_samples=2, estimator="reinforce")
    with self.assertRaisesRegex(ValueError, "needs kl='sample'"):
      jvae.elbo(self.model, estimator="stl")
    with self.assertRaisesRegex(TypeError, "model must meet the jvae.LatentModel contract"):
      jvae.elbo(object())
