"""HMC on p(z|x) and MCMC-EM (jvae.inference) against the exact linear-Gaussian oracles.

Tolerances are stated in each test with what was measured (fixed keys; the spread quoted comes
from the same configuration over other keys). Few, small jits: this file runs in a few seconds.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jvae
from jvae import oracles
from jvae.inference import HMCInfo, hmc_posterior, mcmc_em

D, LATENT, K = 5, 2, 200


def rbg(seed):
  return jax.random.key(seed, impl="unsafe_rbg")


@pytest.fixture(scope="module")
def oracle():
  model = oracles.linear_gaussian_vae(D, LATENT)
  x = 2.0 * jax.random.normal(jax.random.key(1), (3, D))
  params = jax.jit(model.init)(jax.random.key(0), x)
  mean, cov = jax.jit(lambda p: oracles.exact_posterior(model, p, x))(params)
  return model, params, x, mean, cov


@pytest.fixture(scope="module")
def oracle_hmc():
  """20 transitions, L = 5, ε = 0.2 (L·ε = 1, about 3 posterior sd), default jitter 0.5."""
  return jax.jit(hmc_posterior(jvae.oracles.linear_gaussian_vae(D, LATENT), num_steps=20,
                               num_leapfrog=5, step_size=0.2))


def exact_draws(mean, cov, seed, num):
  """``num`` draws of N(mean_i, cov) per row i: ``(num, batch, d)`` (numpy)."""
  mean, cov = np.asarray(mean, np.float64), np.asarray(cov, np.float64)
  eps = np.random.default_rng(seed).standard_normal((num, *mean.shape))
  return jnp.asarray(mean + eps @ np.linalg.cholesky(cov).T, jnp.float32)


def assert_matches_posterior(z, mean, cov, *, tol, cov_tol):
  """Per point: mean within ``tol`` standard errors sd/√K; covariance entries within ``cov_tol``
  sampling sd's √((Σ_ii Σ_jj + Σ_ij²)/K) (those of K independent Gaussian draws)."""
  z, mean, cov = (np.asarray(a, np.float64) for a in (z, mean, cov))
  num = z.shape[0]
  sd = np.sqrt(np.diag(cov))
  mean_err = np.abs(z.mean(0) - mean) / (sd / np.sqrt(num))
  assert mean_err.max() < tol, mean_err
  cov_sd = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov ** 2) / num)
  for i in range(z.shape[1]):
    cov_err = np.abs(np.cov(z[:, i].T) - cov) / cov_sd
    assert cov_err.max() < cov_tol, (i, cov_err)


def test_hmc_keeps_the_exact_posterior_and_forgets_its_start(oracle, oracle_hmc):
  """Chains started at exact draws of p(z|x) keep its mean and covariance; chains all started at
  one point 3 sd from the posterior mean reach them in the same 20 transitions.

  Tolerance: 4 standard errors of K = 200 draws for the means, 4.5 for every covariance entry,
  per point. Measured over 4 keys: ≤ 1.6 (mean) and ≤ 3.4 (covariance) from either start (the
  two starts end at the same states: the chains share their random numbers and coalesce); with
  jitter 0.2 instead of 0.5 the offset start was still 6.5–10.6 standard errors off
  (near-periodic trajectories).
  """
  _, params, x, mean, cov = oracle
  z0 = exact_draws(mean, cov, 10, K)
  z, info = oracle_hmc(params, rbg(0), x, z0)
  assert isinstance(info, HMCInfo) and info.acceptance_rate.shape == (K, 3)
  assert z.shape == z0.shape
  assert_matches_posterior(z, mean, cov, tol=4.0, cov_tol=4.5)
  # the chains moved: correlation with the start ≪ 1 (measured 0.03–0.14)
  assert abs(np.corrcoef(z0[:, 0, 0], z[:, 0, 0])[0, 1]) < 0.3
  # measured acceptance 0.975
  assert 0.9 < float(info.acceptance_rate.mean()) <= 1.0
  assert int(info.num_divergent.sum()) == 0
  np.testing.assert_allclose(info.step_size, 0.2, rtol=1e-6)
  far = jnp.broadcast_to(mean + 3 * np.sqrt(np.diag(cov)), z0.shape)
  z_far, _ = oracle_hmc(params, rbg(0), x, far)
  assert_matches_posterior(z_far, mean, cov, tol=4.0, cov_tol=4.5)


def test_chains_are_independent_per_point(oracle, oracle_hmc):
  """Point i's chains see only x_i and their own keys: the vmapped run over the batch equals a
  one-point run, and changing the other rows changes nothing (measured: bitwise equal; asserted
  to 1e-6)."""
  _, params, x, mean, cov = oracle
  z0 = exact_draws(mean, cov, 10, K)
  z_all, _ = oracle_hmc(params, rbg(0), x, z0)
  z_one, _ = oracle_hmc(params, rbg(0), x[:1], z0[:, :1])
  np.testing.assert_allclose(z_all[:, :1], z_one, atol=1e-6)
  z_other, _ = oracle_hmc(params, rbg(0), x.at[1:].set(0.5), z0.at[:, 1:].set(0.1))
  np.testing.assert_allclose(z_all[:, 0], z_other[:, 0], atol=1e-6)


def test_step_size_adaptation_reaches_the_target(oracle):
  """Stochastic approximation over 100 warm-up transitions, from a too large ε = 1, brings the
  acceptance of the next 40 transitions to the target 0.75: tolerance ± 0.05 on the mean over
  3 × 64 chains (measured over 4 keys: 0.748–0.757, ε 0.42–0.56 per chain; on both oracles
  with 150 or 400 warm-up steps and L = 3 or 10 within 0.02, where blackjax's dual averaging
  ended at 0.83–0.93). The chains then keep the exact posterior: 4.5 standard errors for means
  and covariances (measured ≤ 3.9 and ≤ 2.0 over 4 keys)."""
  model, params, x, mean, cov = oracle
  sample = jax.jit(hmc_posterior(model, num_steps=40, num_leapfrog=3, step_size=1.0,
                                 target_accept=0.75, num_adapt=100))
  z, info = sample(params, rbg(4), x, exact_draws(mean, cov, 11, 64))
  assert abs(float(info.acceptance_rate.mean()) - 0.75) < 0.05, info.acceptance_rate.mean()
  assert 0.2 < float(info.step_size.min()) and float(info.step_size.max()) < 1.0
  assert_matches_posterior(z, mean, cov, tol=4.5, cov_tol=4.5)


def test_mcmc_em_value_and_gradient_paths(oracle):
  """The value is jvae.elbo(kl="sample")'s at the same key; the encoder's gradient is the ELBO's
  (so it gets nothing from the HMC term); the decoder's is ∇θ log p(x, z_T) at the chains'
  z_T, reproduced with hmc_posterior at key fold_in(key, 1). Agreement to 1e-5 (float32)."""
  model, params, x, _, _ = oracle
  num = 4
  f = mcmc_em(model, num_steps=5, num_leapfrog=3, step_size=0.2, num_samples=num)
  elbo = jvae.elbo(model, num_samples=num, kl="sample")
  hmc = hmc_posterior(model, num_steps=5, num_leapfrog=3, step_size=0.2)

  def decoder_term(p, key):
    z0 = model.propose(params, key, x, num_samples=num).z
    z_t, _ = hmc(params, jax.random.fold_in(key, 1), x, z0)
    joint = model.log_joint(p, x, z_t)
    return jnp.mean(joint.log_lik + joint.log_prior)

  def total(objective, p, key):
    values = objective(p, key, x)
    return values.sum(), values

  @jax.jit
  def run(key):
    (_, value), grads = jax.value_and_grad(lambda p: total(f, p, key), has_aux=True)(params)
    (_, e_value), e_grads = jax.value_and_grad(lambda p: total(elbo, p, key),
                                               has_aux=True)(params)
    d_grads = jax.grad(lambda p: decoder_term(p, key) * x.shape[0])(params)
    return value, grads, e_value, e_grads, d_grads

  value, grads, e_value, e_grads, d_grads = run(rbg(5))
  assert value.shape == (3,) and bool(jnp.all(jnp.isfinite(value)))
  np.testing.assert_allclose(value, e_value, rtol=1e-5)
  enc, dec = grads["params"]["encoder"], grads["params"]["decoder"]
  for name in enc:
    np.testing.assert_allclose(enc[name], e_grads["params"]["encoder"][name], atol=1e-5,
                               rtol=1e-5)
    np.testing.assert_array_equal(d_grads["params"]["encoder"][name], 0.0)
  for name in dec:
    assert bool(jnp.all(jnp.isfinite(dec[name])))
    np.testing.assert_allclose(dec[name], d_grads["params"]["decoder"][name], atol=1e-5,
                               rtol=1e-5)
    # and not the ELBO's decoder gradient (z_T ≠ z_0)
    assert float(jnp.max(jnp.abs(dec[name] - e_grads["params"]["decoder"][name]))) > 1e-3


def test_mcmc_em_trains_with_the_trainer():
  """20 Adam steps of jvae.trainer on MCMC-EM (its running step size kept as the objective's
  state) on data from another linear-Gaussian model raise the exact log p(x) and the exact
  ELBO of the data (measured: −14.69 → −10.24 and −19.97 → −10.87; asserted: by > 0.5 nats
  each); the running step size moved (0.30 → 0.35) and stayed finite."""
  model = oracles.linear_gaussian_vae(D, LATENT)
  init = jax.jit(model.init)
  truth = init(jax.random.key(20), jnp.zeros((2, D)))
  rng = np.random.default_rng(21)
  w, b = truth["params"]["decoder"]["W"], truth["params"]["decoder"]["b"]
  data = jnp.asarray(rng.standard_normal((64, LATENT)) @ np.asarray(w).T + np.asarray(b)
                     + rng.standard_normal((64, D)), jnp.float32)
  params = init(jax.random.key(23), data[:2])
  objective = mcmc_em(model, num_steps=3, num_leapfrog=3, step_size=0.3)
  trainer = jvae.trainer(objective, optax.adam(3e-2), batch_size=32)
  state = trainer.init(params, rbg(24))
  step = jax.jit(trainer.step)
  for i in range(20):
    state, metrics = step(state, data[32 * (i % 2): 32 * (i % 2 + 1)])
    assert bool(metrics["finite"])
  assert int(state.step) == 20 and int(state.nonfinite) == 0
  exact = jax.jit(lambda p: (oracles.exact_log_marginal(model, p, data).mean(),
                             oracles.exact_elbo(model, p, data).mean()))
  before, after = exact(params), exact(state.params)
  assert float(after[0]) > float(before[0]) + 0.5, (before, after)
  assert float(after[1]) > float(before[1]) + 0.5, (before, after)
  log_eps = state.objective_state["log_step_size"]
  assert bool(jnp.isfinite(log_eps)) and float(log_eps) != pytest.approx(np.log(0.3))


def test_bad_input(oracle):
  model, params, x, _, _ = oracle
  for kwargs, match in [({"num_steps": 0}, "num_steps"),
                        ({"num_steps": 2, "num_leapfrog": 0}, "num_leapfrog"),
                        ({"num_steps": 2, "step_size": 0.0}, "step_size"),
                        ({"num_steps": 2, "step_size": float("nan")}, "step_size"),
                        ({"num_steps": 2, "target_accept": 1.0}, "target_accept"),
                        ({"num_steps": 2, "num_adapt": -1}, "num_adapt"),
                        ({"num_steps": 2, "jitter": 1.0}, "jitter")]:
    with pytest.raises(ValueError, match=match):
      hmc_posterior(model, **kwargs)
  with pytest.raises(TypeError, match="LatentModel"):
    hmc_posterior(object(), num_steps=1)
  f = hmc_posterior(model, num_steps=1, num_leapfrog=1)
  z0 = jnp.zeros((2, 3, LATENT))
  with pytest.raises(ValueError, match=r"\(K, batch=3"):
    f(params, rbg(0), x, z0[:, :2])
  with pytest.raises(ValueError, match=r"\(K, batch=3"):
    f(params, rbg(0), x, z0[0])
  with pytest.raises(TypeError, match="floating"):
    f(params, rbg(0), x, z0.astype(jnp.int32))
  with pytest.raises(TypeError, match="key"):
    f(params, jax.random.split(rbg(0), 2), x, z0)
  with pytest.raises(TypeError, match="floating"):
    f(params, rbg(0), x.astype(jnp.int32), z0)
  with pytest.raises(ValueError, match="step_size"):
    f(params, rbg(0), x, z0, step_size=-1.0)
  with pytest.raises(ValueError, match="num_steps"):
    mcmc_em(model, num_steps=0)
  with pytest.raises(ValueError, match="estimator"):
    mcmc_em(model, num_steps=1, estimator="dreg")
  with pytest.raises(ValueError, match="target_accept"):
    mcmc_em(model, num_steps=1, target_accept=0.0)
  with pytest.raises(ValueError, match="num_samples"):
    mcmc_em(model, num_steps=1, num_samples=0)
