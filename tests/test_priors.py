"""Learned priors: VampPrior, learned Gaussian and mixture priors, and the conditional prior net.

Each test compiles one jitted function (the VampPrior tests share one), to stay fast on CPU.
"""

import math

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jvae
from jvae.models.priors import (
    ConditionalGaussianPrior,
    LearnedGaussianPrior,
    MixturePrior,
    VampPrior,
    inverse_softplus_scale,
    prior_samples,
)

EVENT, LATENT, HIDDEN, C, N = (64,), 3, (8,), 5, 4


def _vae(prior):
  base = jvae.mlp_vae(event_shape=EVENT, latent_dim=LATENT, hidden=HIDDEN)
  return jvae.VAE(base.encoder, base.decoder, prior=prior)


def _x(seed=0):
  return jax.random.bernoulli(jax.random.key(seed), 0.4, (N, *EVENT)).astype(jnp.float32)


def _prior(model, params):
  return model.apply(params, method=lambda m: m.prior_distribution())


def _hand_elbo(model, params, key, x, num_samples=1):
  """ELBO from the contract's log-weights: mean_k [log p(x|z) + log p(z) − log q(z|x)]."""
  p = model.propose(params, key, x, num_samples=num_samples)
  j = model.log_joint(params, x, p.z)
  return jvae.bounds.elbo(j.log_lik + j.log_prior - p.log_q)


def _log_normal(z, loc, scale):
  """Hand-written log N(z; loc, diag scale²), summed over the last axis (numpy, float64)."""
  return np.sum(-0.5 * ((z - loc) / scale) ** 2 - np.log(scale) - 0.5 * math.log(2 * math.pi), -1)


def _logsumexp(a, axis):
  m = np.max(a, axis, keepdims=True)
  return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis))


def _grad_max(tree):
  return max(float(jnp.abs(leaf).max()) for leaf in jax.tree_util.tree_leaves(tree))


# ------------------------------------------------------------------------------------------------
# VampPrior


@pytest.fixture(scope="module")
def vamp():
  """A VAE with a VampPrior, its params, and everything the VampPrior tests look at."""
  model = _vae(VampPrior(C, EVENT))
  x = _x()
  z = jax.random.normal(jax.random.key(1), (6, N, LATENT)) * 1.5
  static = {}

  @jax.jit
  def run(key):
    params = model.init(key, x)
    prior = _prior(model, params)
    static.update(batch=prior.batch_shape, event=prior.event_shape, type=type(prior))
    q_u = model.apply(params, params["params"]["prior"]["pseudo_inputs"],
                      method=jvae.VAE.encode)
    samples = prior.sample(seed=jax.random.key(2), sample_shape=(7, 2))
    drawn = prior_samples(model, params, jax.random.key(2), 9)
    prop = model.propose(params, jax.random.key(5), x, num_samples=3)
    grad_elbo = jax.grad(lambda p: -jnp.mean(_hand_elbo(model, p, jax.random.key(3), x)))(params)
    grad_prior = jax.grad(lambda p: jnp.sum(_prior(model, p).log_prob(z)))(params)
    return dict(params=params, log_p=prior.log_prob(z), loc=q_u.loc, scale=q_u.scale_diag,
                samples=samples, drawn=drawn, samples_log_p=prior.log_prob(samples), proposal=prop,
                joint=model.log_joint(params, x, prop.z), prior_at_z=prior.log_prob(prop.z),
                grad_elbo=grad_elbo, grad_prior=grad_prior,
                elbo=jvae.elbo(model, kl="sample")(params, jax.random.key(6), x),
                hand_elbo=_hand_elbo(model, params, jax.random.key(6), x))

  out = run(jax.random.key(0))
  return model, x, z, out, static


def test_vamp_params_live_under_the_vae(vamp):
  *_, out, _ = vamp
  prior_params = out["params"]["params"]["prior"]
  # Only the pseudo-inputs are new; the prior reuses the encoder's parameters.
  assert set(prior_params) == {"pseudo_inputs"}
  u = np.asarray(prior_params["pseudo_inputs"])
  assert u.shape == (C, *EVENT)
  assert abs(u.mean() - 0.5) < 0.05 and abs(u.std() - 0.1) < 0.03  # N(0.5, 0.1²) init


def test_vamp_log_prob_is_the_mixture_of_posteriors_at_the_pseudo_inputs(vamp):
  _, _, z, out, static = vamp
  assert static["type"] is distrax.MixtureSameFamily
  loc, scale = np.asarray(out["loc"], np.float64), np.asarray(out["scale"], np.float64)
  assert loc.shape == (C, LATENT)
  comp = _log_normal(np.asarray(z, np.float64)[..., None, :], loc, scale)  # (6, N, C)
  want = _logsumexp(comp, -1) - math.log(C)
  assert out["log_p"].shape == (6, N)
  np.testing.assert_allclose(out["log_p"], want, rtol=1e-5, atol=1e-5)


def test_vamp_samples(vamp):
  *_, out, static = vamp
  assert tuple(static["batch"]) == () and tuple(static["event"]) == (LATENT,)
  assert out["samples"].shape == (7, 2, LATENT) and out["samples_log_p"].shape == (7, 2)
  assert np.all(np.isfinite(out["samples_log_p"]))
  assert out["drawn"].shape == (9, LATENT) and np.all(np.isfinite(out["drawn"]))


def test_vamp_gradient_reaches_pseudo_inputs_and_encoder(vamp):
  *_, out, _ = vamp
  g_u = np.asarray(out["grad_elbo"]["params"]["prior"]["pseudo_inputs"])
  assert np.all(np.isfinite(g_u)) and np.abs(g_u).max() > 0
  # log p(z) alone reaches the encoder too (through q(z|u_c)), and the pseudo-inputs.
  assert _grad_max(out["grad_prior"]["params"]["encoder"]["head"]["loc"]) > 0
  assert _grad_max(out["grad_prior"]["params"]["prior"]) > 0


def test_vae_with_vamp_meets_the_contract(vamp):
  *_, out, _ = vamp
  p, j = out["proposal"], out["joint"]
  assert p.z.shape == (3, N, LATENT) and p.log_q.shape == (3, N)
  assert j.log_lik.shape == (3, N) and j.log_prior.shape == (3, N)
  assert j.log_prior_groups is None  # a mixture has no per-dimension split
  assert p.kl is None and p.kl_groups is None  # nor a closed-form KL
  np.testing.assert_allclose(j.log_prior, out["prior_at_z"], rtol=1e-6)


def test_vamp_analytic_kl_is_a_clear_error_and_sample_kl_works(vamp):
  model, x, _, out, _ = vamp
  params, key = out["params"], jax.random.key(6)
  with pytest.raises(ValueError, match=r"MixtureSameFamily.*kl='sample'"):
    jax.eval_shape(lambda p: jvae.analytic_kl(model.apply(p, x, method=jvae.VAE.encode),
                                              _prior(model, p)), params)
  with pytest.raises(ValueError, match=r"closed-form.*kl='sample'"):
    jax.eval_shape(jvae.elbo(model, kl="analytic"), params, key, x)
  with pytest.raises(ValueError, match=r"closed-form.*kl='sample'"):
    jax.eval_shape(jvae.elbo(model, kl="analytic", free_bits=0.1), params, key, x)
  assert out["elbo"].shape == (N,) and np.all(np.isfinite(out["elbo"]))
  np.testing.assert_allclose(out["elbo"], out["hand_elbo"], rtol=1e-5)


def test_vamp_rejects_bad_configuration():
  with pytest.raises(ValueError, match="num_components"):
    jax.eval_shape(_vae(VampPrior(0, EVENT)).init, jax.random.key(0), _x())
  with pytest.raises(TypeError, match="encoder"):
    jax.eval_shape(VampPrior(C, EVENT).init, jax.random.key(0), jnp.zeros((2, 10)))


# ------------------------------------------------------------------------------------------------
# Learned Gaussian and mixture priors


def test_learned_gaussian_prior_matches_distrax_and_starts_standard():
  prior = LearnedGaussianPrior(LATENT)
  loc, scale = jnp.array([0.3, -1.0, 2.0]), jnp.array([0.5, 1.5, 0.1])
  params = {"params": {"loc": loc, "scale": inverse_softplus_scale(scale)}}
  z = jax.random.normal(jax.random.key(1), (5, N, LATENT))
  kinds = []

  @jax.jit
  def run(key):
    start = prior.apply(prior.init(key))
    dist = prior.apply(params, "ignored context")
    kinds.append(type(dist))
    return (start.loc, start.scale_diag, dist.log_prob(z),
            distrax.MultivariateNormalDiag(loc, scale).log_prob(z))

  loc0, scale0, got, want = run(jax.random.key(0))
  np.testing.assert_allclose(loc0, 0.0)
  np.testing.assert_allclose(scale0, 1.0, rtol=1e-6)
  assert kinds == [distrax.MultivariateNormalDiag]
  assert got.shape == (5, N)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_learned_gaussian_prior_keeps_analytic_kl():
  model = _vae(LearnedGaussianPrior(LATENT))
  x = _x()
  loc, scale = jnp.array([0.5, -0.5, 1.0]), jnp.array([0.7, 1.3, 2.0])

  @jax.jit
  def run(key):
    params = model.init(key, x)
    params["params"]["prior"] = {"loc": loc, "scale": inverse_softplus_scale(scale)}
    q = model.apply(params, x, method=jvae.VAE.encode)
    prop = model.propose(params, jax.random.key(1), x, num_samples=20000)
    mc = jnp.mean(prop.log_q - model.log_joint(params, x, prop.z).log_prior, 0)
    grad = jax.grad(lambda p: jnp.sum(jvae.elbo(model, kl="analytic")(p, key, x)))(params)
    return dict(kl=prop.kl, groups=prop.kl_groups, mc=mc, grad=grad["params"]["prior"],
                want=jvae.analytic_kl(q, distrax.MultivariateNormalDiag(loc, scale)),
                elbo=jvae.elbo(model, kl="analytic")(params, key, x))

  out = run(jax.random.key(0))
  np.testing.assert_allclose(out["kl"], out["want"], rtol=1e-4)
  np.testing.assert_allclose(out["groups"].sum(-1), out["kl"], rtol=1e-5)
  # The closed form agrees with the Monte-Carlo KL E_q[log q − log p].
  np.testing.assert_allclose(out["mc"], out["kl"], atol=0.05)
  assert out["elbo"].shape == (N,) and np.all(np.isfinite(out["elbo"]))
  # The prior is learned: the bound's gradient reaches μ and σ.
  assert _grad_max(out["grad"]["loc"]) > 0 and _grad_max(out["grad"]["scale"]) > 0


def test_mixture_prior_log_prob_by_hand():
  prior = MixturePrior(LATENT, num_components=4)
  shapes = jax.tree_util.tree_map(jnp.shape, jax.eval_shape(prior.init, jax.random.key(0)))
  assert shapes["params"] == {"logits": (4,), "loc": (4, LATENT), "scale": (4, LATENT)}
  rng = np.random.default_rng(1)
  logits, loc, raw = rng.normal(size=4), rng.normal(size=(4, LATENT)), rng.normal(size=(4, LATENT))
  params = {"params": jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32),
                                             {"logits": logits, "loc": loc, "scale": raw})}
  z = rng.normal(size=(5, 3, LATENT)) * 2

  @jax.jit
  def run(params, z):
    dist = prior.apply(params)
    return dist.log_prob(z), dist.sample(seed=jax.random.key(3), sample_shape=(6,))

  got, zs = run(params, jnp.asarray(z, jnp.float32))
  scale = np.logaddexp(0.0, raw) + prior.min_scale  # softplus
  log_w = logits - _logsumexp(logits, 0)
  want = _logsumexp(_log_normal(z[..., None, :], loc, scale) + log_w, -1)
  assert got.shape == (5, 3) and zs.shape == (6, LATENT)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_mixture_prior_in_a_vae():
  model = _vae(MixturePrior(LATENT, 3))
  x = _x()
  params = jax.eval_shape(model.init, jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"closed-form.*kl='sample'"):
    jax.eval_shape(jvae.elbo(model, kl="analytic"), params, jax.random.key(1), x)

  @jax.jit
  def run(key):
    params = model.init(key, x)
    return jax.value_and_grad(lambda p: jnp.sum(_hand_elbo(model, p, jax.random.key(1), x, 2)))(
        params)

  value, grad = run(jax.random.key(0))
  assert np.isfinite(value)
  assert _grad_max(grad["params"]["prior"]["logits"]) > 0
  assert _grad_max(grad["params"]["prior"]["loc"]) > 0


def test_conditional_gaussian_prior_shapes():
  prior = ConditionalGaussianPrior(LATENT, hidden=(6,))
  c = jax.nn.one_hot(jnp.arange(N) % 3, 3)
  info = {}

  @jax.jit
  def run(key):
    dist = prior.apply(prior.init(key, c), c)
    info.update(type=type(dist), batch=dist.batch_shape, event=dist.event_shape)
    return dist.log_prob(jnp.zeros((2, N, LATENT)))

  assert run(jax.random.key(0)).shape == (2, N)
  assert info["type"] is distrax.MultivariateNormalDiag
  assert tuple(info["batch"]) == (N,) and tuple(info["event"]) == (LATENT,)
  with pytest.raises(ValueError, match=r"\(batch, cond_dim\)"):
    jax.eval_shape(prior.init, jax.random.key(0), jnp.zeros((3,)))
