"""AIS estimates of log p(x) and BDMC sandwiches (jvae.inference.ais) against exact oracles.

Tolerances are stated in each test with what was measured (fixed keys; spreads quoted from the
same configuration over other keys). Few, small jits.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jvae
from jvae import oracles
from jvae.inference import ais_log_marginal, ais_schedule, bdmc

D, LATENT = 5, 2


def rbg(seed):
  return jax.random.key(seed, impl="unsafe_rbg")


@pytest.fixture(scope="module")
def oracle():
  model = oracles.linear_gaussian_vae(D, LATENT)
  x = 2.0 * jax.random.normal(jax.random.key(1), (8, D))
  params = jax.jit(model.init)(jax.random.key(0), x)
  exact = jax.jit(lambda p, x: oracles.exact_log_marginal(model, p, x))
  return model, params, x, exact


@pytest.mark.parametrize("init", ["prior", "posterior"])
def test_ais_estimate_is_within_its_standard_errors(oracle, init):
  """T = 100 annealing steps, C = 32 chains, L = 5, on 8 points of the linear-Gaussian oracle
  (from p(z), or from the mismatched initial encoder q(z|x)): the mean error over the points is
  within 3.5 standard errors of the mean (from the delta-method standard errors, ≈ 0.07 nats
  per point), and each point within 0.4 nats of the exact log p(x). Measured over 10 keys ×
  8 points: the error's sd 0.078 (prior) and 0.077 (posterior), its mean ≤ 0.01, the largest
  |error| 0.31; the mean over points within 2.8 standard errors. Per point the delta method
  underestimates the spread by ~15% with the adapted step size (largest |error|/se 5.1, 3.5
  with a fixed one), so it is not the per-point criterion."""
  model, params, x, exact = oracle
  f = jax.jit(ais_log_marginal(model, num_steps=100, num_chains=32, num_leapfrog=5,
                               step_size=0.2, init=init, return_stderr=True))
  value, stderr = f(params, rbg(0), x)
  log_p = exact(params, x)
  assert value.shape == stderr.shape == (8,)
  assert bool(jnp.all(stderr > 0)) and float(stderr.max()) < 0.3
  err = np.asarray(value - log_p)
  assert np.abs(err).max() < 0.4, err
  mean_se = float(jnp.sqrt(jnp.sum(stderr ** 2)) / 8)
  assert abs(err.mean()) < 3.5 * mean_se, (err.mean(), mean_se)


def test_bdmc_sandwich_is_tight_after_enough_steps(oracle):
  """BDMC with T = 100, C = 16 on 8 simulated points of the linear-Gaussian oracle: the mean
  lower bound is below the exact log p(x) and the mean upper bound above it, each within 3
  standard errors of the mean (measured over 4 keys: lower − exact in [−0.04, 0.00], upper −
  exact in [−0.06, 0.02], standard errors ≈ 0.035), and the mean width is under 0.15 nats
  (measured |width| ≤ 0.06)."""
  model, params, _, exact = oracle
  f = jax.jit(bdmc(model, num_steps=100, num_chains=16, num_leapfrog=5, step_size=0.2),
              static_argnums=2)
  out = f(params, rbg(1), 8)
  assert set(out) == {"x", "lower", "upper", "lower_stderr", "upper_stderr"}
  assert out["x"].shape == (8, D) and out["lower"].shape == out["upper"].shape == (8,)
  log_p = exact(params, out["x"])
  lower_se = float(jnp.sqrt(jnp.sum(out["lower_stderr"] ** 2)) / 8)
  upper_se = float(jnp.sqrt(jnp.sum(out["upper_stderr"] ** 2)) / 8)
  assert float(jnp.mean(out["lower"] - log_p)) < 3 * lower_se
  assert float(jnp.mean(out["upper"] - log_p)) > -3 * upper_se
  assert abs(float(jnp.mean(out["upper"] - out["lower"]))) < 0.15


def test_bdmc_short_runs_bracket_log_p_on_a_pytree_latent():
  """With only T = 5 steps and C = 2 chains on the two-layer oracle (z = (z_1, z_2)), the
  sandwich is wide and both sides hold clearly on average over 64 simulated points (measured
  over 4 keys: lower − exact −6.8 … −9.0, upper − exact +1.8 … +2.2, standard errors of the
  means ≈ 0.1); asserted: below −1 and above +1. The model's exact_log_marginal method is
  reported as ``log_p_true``."""
  model = oracles.two_layer_linear_gaussian(D, (2, 1))
  sandwich = bdmc(model, num_steps=5, num_chains=2, num_leapfrog=5)
  # one program: the oracle's init (16 Threefry draws) would cost a compile of its own
  out = jax.jit(lambda key: sandwich(model.init(key, jnp.zeros((2, D))), rbg(0), 64))(
      jax.random.key(3))
  assert out["log_p_true"].shape == (64,) and bool(jnp.all(jnp.isfinite(out["log_p_true"])))
  assert float(jnp.mean(out["lower"] - out["log_p_true"])) < -1.0
  assert float(jnp.mean(out["upper"] - out["log_p_true"])) > 1.0


def test_two_layer_log_q_matches_its_proposal():
  """The two-layer oracle's optional log_q, at propose's own z, equals propose's log q (to
  1e-5), in both orders of q; its sample_prior has propose's shapes."""
  x = jnp.ones((3, D))

  @jax.jit
  def run(key):
    out = []
    for order in ("bottom_up", "top_down"):
      model = oracles.two_layer_linear_gaussian(D, (2, 1), order=order)
      params = model.init(key, x)
      proposal = model.propose(params, key, x, num_samples=4)
      out.append((proposal.log_q, model.log_q(params, x, proposal.z),
                  model.sample_prior(params, key, x, num_samples=4)))
    return out

  for log_q, log_q_again, prior_z in run(rbg(1)):
    np.testing.assert_allclose(log_q_again, log_q, rtol=1e-5, atol=1e-5)
    assert [a.shape for a in prior_z] == [(4, 3, 2), (4, 3, 1)]


def test_schedules():
  for name in ("sigmoid", "geometric", "linear"):
    for steps in (1, 2, 10):
      betas = ais_schedule(steps, name)
      assert betas.shape == (steps + 1,) and betas[0] == 0.0 and betas[-1] == 1.0
      assert np.all(np.diff(betas) > 0), (name, betas)
  np.testing.assert_allclose(ais_schedule(4, "linear"), [0, 0.25, 0.5, 0.75, 1])
  geometric = ais_schedule(5, "geometric")
  np.testing.assert_allclose(geometric[2:] / geometric[1:-1], geometric[2] / geometric[1])
  np.testing.assert_allclose(geometric[1], 1e-4)
  assert ais_schedule(2, [0.0, 0.3, 1.0])[1] == 0.3
  for bad, match in [([0.0, 1.0], "num_steps \\+ 1"), ([0.1, 0.5, 1.0], "from exactly 0"),
                     ([0.0, 0.7, 0.5, 1.0][:3], "non-decreasing"), ("cosine", "unknown")]:
    with pytest.raises(ValueError, match=match):
      ais_schedule(2, bad)
  with pytest.raises(ValueError, match="num_steps"):
    ais_schedule(0)


class _Minimal:
  """Only the three contract methods: no sample_prior, log_q or sample_joint."""

  def init(self, key, batch):
    return {"w": jnp.ones((D, 1))}

  def propose(self, params, key, batch, *, num_samples, density_params=None):
    z = jax.random.normal(key, (num_samples, batch.shape[0], 1))
    return jvae.Proposal(z, jnp.zeros(z.shape[:2]))

  def log_joint(self, params, batch, z):
    return jvae.Joint(jnp.zeros(z.shape[:2]), jnp.zeros(z.shape[:2]))


def test_bad_input(oracle):
  model, params, x, _ = oracle
  with pytest.raises(TypeError, match="sample_prior"):
    ais_log_marginal(_Minimal(), num_steps=2, num_chains=2)
  with pytest.raises(TypeError, match="log_q"):
    ais_log_marginal(_Minimal(), num_steps=2, num_chains=2, init="posterior")
  with pytest.raises(TypeError, match="sample_joint"):
    bdmc(_Minimal.__new__(type("P", (_Minimal,), {"sample_prior": lambda *a, **k: None})),
         num_steps=2, num_chains=2)
  with pytest.raises(TypeError, match="LatentModel"):
    ais_log_marginal(object(), num_steps=2, num_chains=2)
  for kwargs, match in [({"num_steps": 0}, "num_steps"), ({"num_chains": 0}, "num_chains"),
                        ({"num_leapfrog": 0}, "num_leapfrog"), ({"step_size": 0.0}, "step_size"),
                        ({"target_accept": 1.5}, "target_accept"),
                        ({"adapt_rate": -1.0}, "adapt_rate"), ({"jitter": -0.1}, "jitter"),
                        ({"init": "uniform"}, "init"), ({"schedule": "cosine"}, "schedule")]:
    config = {"num_steps": 2, "num_chains": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
      ais_log_marginal(model, **config)
    with pytest.raises(ValueError, match=match):
      bdmc(model, **config)
  f = ais_log_marginal(model, num_steps=2, num_chains=2)
  with pytest.raises(TypeError, match="key"):
    f(params, jax.random.split(rbg(0), 2), x)
  with pytest.raises(TypeError, match="floating"):
    f(params, rbg(0), x.astype(jnp.int32))
  with pytest.raises(ValueError, match="batch"):
    f(params, rbg(0), x[0])
  with pytest.raises(ValueError, match="beta must be 1"):
    f(params, rbg(0), x, beta=0.5)
  g = bdmc(model, num_steps=2, num_chains=2)
  with pytest.raises(ValueError, match="num_points"):
    g(params, rbg(0), 0)
  with pytest.raises(TypeError, match="key"):
    g(params, 0, 3)
