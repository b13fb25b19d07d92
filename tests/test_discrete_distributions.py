"""Discrete latents and their relaxations (jvae.distributions.discrete), against closed forms,
independent computations (numpy/scipy, distrax.Logistic, quadrature, enumeration) and
Monte-Carlo moments with fixed keys.

Every Monte-Carlo tolerance is stated next to its assertion as a multiple of the standard error
of the estimate; the keys are fixed, so each check is deterministic. Compiling is most of the cost
on a 2-core machine (eagerly, every primitive of every shape is a compile of its own), so the
arrays the tests read come from one jitted program, :func:`_results`, compiled once; only the
checks of errors raised at trace time run eagerly.
"""

from __future__ import annotations

import functools
import itertools
import math

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from jvae.distributions import discrete as dd

BIG = 1e4
N_MC = 20_000

# LLVM's backend optimisations and XLA's fusion emitters are most of XLA's CPU compile time and buy
# nothing for these tiny programs: compile without them.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                   "xla_cpu_use_fusion_emitters": False})


def key(seed: int):
  """A typed key of the ``rbg`` PRNG: much cheaper to compile than threefry; any key works."""
  return jax.random.key(seed, impl="rbg")


def _rng(seed):
  return np.random.default_rng(seed)


def _f32(a):
  return np.asarray(a, np.float32)


# inputs (numpy, so that building them compiles nothing)
BERN_LOGITS = _f32(_rng(0).normal(size=(3, 4)) * 2)
BERN_Z = _f32(_rng(1).random((2, 3, 4)) < 0.5)
KL_Q, KL_P = _f32(_rng(2).normal(size=5) * 2), _f32(_rng(3).normal(size=5) * 2)
CAT_Q, CAT_P = _f32(_rng(4).normal(size=(2, 4))), _f32(_rng(5).normal(size=(2, 4)))
CAT_IDX = np.array([[1, 3], [0, 2], [3, 3]])  # (K=3, 2)
CAT_Z = np.eye(4, dtype=np.float32)[CAT_IDX]  # (3, 2, 4)
SAMPLE_BERN = _f32([-2.0, 0.0, 1.5])
SAMPLE_CAT = _f32([[0.5, -1.0, 1.0], [2.0, 0.0, 0.0]])
LOGISTIC_Y = _f32(np.linspace(-60.0, 60.0, 24_001))  # tails at scale 1/τ = 2: e^-30 at the ends
UNIT_X = np.linspace(0.02, 0.98, 9)
BC_LOGITS, BC_TAU = _f32([-1.0, 0.3, 2.0]), 0.5
EXP_LOGITS, EXP_TAU = _f32(_rng(6).normal(size=(2, 3))), 0.7
ARGMAX_LOGITS = _f32([0.5, -1.0, 1.0, 0.0])
SIMPLEX_GRID = 600
ENUM_Q, ENUM_P = _f32([0.5, -1.0, 2.0]), _f32([0.0, 1.0, -0.5])
ENUM_Z = _f32(list(itertools.product([0.0, 1.0], repeat=3)))  # (8, 3)
EXTREME = {"lb": _f32([BIG, -BIG, BIG, -BIG]), "pb": _f32([-BIG, BIG, BIG, 0.0]),
           "lc": _f32([[BIG, -BIG, 0.0], [-BIG, -BIG, BIG]]),
           "pc": _f32([[-BIG, BIG, 0.0], [0.0, 0.0, 0.0]]), "tau": np.float32(0.5)}


def _simplex_points():
  """Midpoints of a grid over (x_1, x_2) strictly inside the 2-simplex, and the cell size."""
  h = 1.0 / SIMPLEX_GRID
  c = (np.arange(SIMPLEX_GRID) + 0.5) * h
  x1, x2 = np.meshgrid(c, c, indexing="ij")
  inside = x1 + x2 < 1 - h
  return _f32(np.stack([x1[inside], x2[inside], 1 - x1[inside] - x2[inside]], -1)), h


def _extreme_terms(lb, pb, lc, pc, tau):
  zb = jnp.array([0.0, 1.0, 1.0, 0.0])
  zc = jnp.eye(3)[jnp.array([1, 0])]
  yb = dd.binary_concrete_sample(key(6), lb, tau, num_samples=2)
  yc = dd.exp_concrete_sample(key(6), lc, tau, num_samples=2)
  return [dd.bernoulli_log_prob(zb, lb), dd.bernoulli_kl(lb, pb),
          dd.categorical_log_prob(zc, lc), dd.categorical_kl(lc, pc),
          dd.binary_concrete_log_prob(yb, lb, tau), dd.binary_concrete_log_prob(yb, pb, tau),
          dd.exp_concrete_log_prob(yc, lc, tau), dd.exp_concrete_log_prob(yc, pc, tau)]


@functools.cache
def _results():
  """Every array the tests read, from one compiled program."""
  @jit
  def run(extreme, grids):  # large inputs as arguments, not constants folded into the program
    simplex, logistic_y = grids
    unit_y = jnp.log(UNIT_X) - jnp.log1p(-UNIT_X)
    out = {}
    out["bern_lp"] = dd.bernoulli_log_prob(BERN_Z, BERN_LOGITS)
    out["bern_lp_sum"] = dd.bernoulli_log_prob(BERN_Z, BERN_LOGITS, event_ndims=1)
    out["bern_kl"] = dd.bernoulli_kl(KL_Q, KL_P)
    out["bern_z"] = dd.sample_bernoulli(key(0), SAMPLE_BERN, num_samples=N_MC)
    out["bern_z_grad"] = jax.grad(lambda lg: dd.sample_bernoulli(
        key(0), lg, num_samples=4).sum())(jnp.asarray(SAMPLE_BERN))
    out["cat_lp"] = dd.categorical_log_prob(CAT_Z, CAT_Q)
    out["cat_lp_sum"] = dd.categorical_log_prob(CAT_Z, CAT_Q, event_ndims=1)
    out["cat_kl"] = dd.categorical_kl(CAT_Q, CAT_P)
    out["cat_z"] = dd.sample_categorical(key(1), SAMPLE_CAT, num_samples=N_MC)
    out["logistic_lp"] = dd.binary_concrete_log_prob(logistic_y, 0.7, 0.5)
    out["logistic_ref"] = distrax.Logistic(0.7 / 0.5, 1.0 / 0.5).log_prob(logistic_y)
    out["unit_lp"] = dd.binary_concrete_log_prob(unit_y, -0.4, 0.8)
    y = dd.binary_concrete_sample(key(2), BC_LOGITS, BC_TAU, num_samples=N_MC)
    out["bc_y"], out["bc_hard"] = y, dd.hard_bernoulli(y)
    out["bc_grad"] = jax.grad(lambda lg: dd.binary_concrete_sample(
        key(2), lg, BC_TAU, num_samples=3).sum())(jnp.asarray(BC_LOGITS))
    y = dd.exp_concrete_sample(key(3), EXP_LOGITS, EXP_TAU, num_samples=5)
    l2 = EXP_LOGITS[:, :2]
    y2 = dd.exp_concrete_sample(key(4), l2, EXP_TAU, num_samples=4)
    out["exp_y"] = y
    out["concrete"] = dd.concrete_log_prob(jnp.exp(y), EXP_LOGITS, EXP_TAU)
    out["exp_concrete"] = dd.exp_concrete_log_prob(y, EXP_LOGITS, EXP_TAU)
    out["exp_concrete2"] = dd.exp_concrete_log_prob(y2, l2, EXP_TAU)
    out["binary2"] = dd.binary_concrete_log_prob(y2[..., 0] - y2[..., 1], l2[:, 0] - l2[:, 1],
                                                 EXP_TAU)
    out["simplex_lp"] = dd.concrete_log_prob(simplex, jnp.array([0.3, -0.5, 0.1]), 1.5)
    out["argmax"] = dd.hard_categorical(
        dd.exp_concrete_sample(key(5), ARGMAX_LOGITS, 2.0, num_samples=N_MC)).mean(0)
    soft = jnp.array([0.2, 0.7])
    st, vjp = jax.vjp(lambda s: dd.straight_through(jnp.round(s), s), soft)
    out["st"], out["st_grad"] = st, vjp(jnp.array([1.0, 2.0]))[0]
    out["hard_cat"] = dd.hard_categorical(jnp.array([[0.1, 0.5, -1.0]]))
    out["enum_lq"] = dd.bernoulli_log_prob(ENUM_Z, ENUM_Q, event_ndims=1)
    out["enum_lp"] = dd.bernoulli_log_prob(ENUM_Z, ENUM_P, event_ndims=1)
    out["enum_kl"] = dd.bernoulli_kl(ENUM_Q, ENUM_P).sum()
    args = tuple(extreme[k] for k in ("lb", "pb", "lc", "pc", "tau"))
    out["extreme"] = _extreme_terms(*args)
    # a non-finite gradient of any term shows in the gradient of their total
    out["extreme_grad"] = jax.grad(lambda a: sum(jnp.sum(t) for t in _extreme_terms(*a)))(args)
    t = extreme["tau"]  # a traced temperature
    out["traced"] = dd.exp_concrete_log_prob(
        dd.exp_concrete_sample(key(7), jnp.zeros(3), t, num_samples=2), jnp.zeros(3), t)
    return out

  return jax.tree_util.tree_map(np.asarray, run(EXTREME, (_simplex_points()[0], LOGISTIC_Y)))


# -- Bernoulli -----------------------------------------------------------------------------------


def test_bernoulli_log_prob_closed_form_and_sum():
  r = _results()
  p = special.expit(BERN_LOGITS.astype(np.float64))
  expected = np.where(BERN_Z == 1, np.log(p), np.log1p(-p))
  assert r["bern_lp"].shape == (2, 3, 4)
  np.testing.assert_allclose(r["bern_lp"], expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(r["bern_lp_sum"], expected.sum(-1), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="event_ndims"):
    dd.bernoulli_log_prob(BERN_Z, BERN_LOGITS, event_ndims=4)
  with pytest.raises(ValueError, match="does not broadcast"):
    dd.bernoulli_log_prob(BERN_Z, BERN_LOGITS[:, :3])


def test_bernoulli_sampling_frequencies():
  z = _results()["bern_z"]
  assert z.shape == (N_MC, 3) and z.dtype == np.float32
  assert set(np.unique(z)) <= {0.0, 1.0}
  p = special.expit(SAMPLE_BERN.astype(np.float64))
  np.testing.assert_array_less(np.abs(z.mean(0) - p), 4 * np.sqrt(p * (1 - p) / N_MC))  # 4 s.e.
  np.testing.assert_array_equal(_results()["bern_z_grad"], 0.0)  # gradient-free
  with pytest.raises(ValueError, match="num_samples"):
    dd.sample_bernoulli(key(0), SAMPLE_BERN, num_samples=0)


def test_bernoulli_kl_against_closed_form():
  pq, pp = special.expit(KL_Q.astype(np.float64)), special.expit(KL_P.astype(np.float64))
  expected = pq * np.log(pq / pp) + (1 - pq) * np.log((1 - pq) / (1 - pp))
  np.testing.assert_allclose(_results()["bern_kl"], expected, rtol=1e-4, atol=1e-6)


def test_bernoulli_kl_of_a_factorized_q_against_enumeration():
  """The sum of per-variable KLs is the KL of the factorized q over {0,1}^3 by enumeration."""
  r = _results()
  lq, lp = r["enum_lq"].astype(np.float64), r["enum_lp"].astype(np.float64)
  np.testing.assert_allclose(np.exp(lq).sum(), 1.0, rtol=1e-6)
  np.testing.assert_allclose(r["enum_kl"], np.sum(np.exp(lq) * (lq - lp)), rtol=1e-5)


# -- categorical ---------------------------------------------------------------------------------


def test_categorical_log_prob_and_kl_against_enumeration():
  r = _results()
  q, p = CAT_Q.astype(np.float64), CAT_P.astype(np.float64)
  log_pi = q - special.logsumexp(q, -1, keepdims=True)
  expected = np.take_along_axis(log_pi[None], CAT_IDX[..., None], -1)[..., 0]
  assert r["cat_lp"].shape == (3, 2)
  np.testing.assert_allclose(r["cat_lp"], expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(r["cat_lp_sum"], expected.sum(-1), rtol=1e-5)
  pi, rho = special.softmax(q, -1), special.softmax(p, -1)
  kl = sum(pi[:, c] * np.log(pi[:, c] / rho[:, c]) for c in range(4))
  np.testing.assert_allclose(r["cat_kl"], kl, rtol=1e-4)
  with pytest.raises(ValueError, match="category"):
    dd.categorical_log_prob(CAT_Z[..., :3], CAT_Q)


def test_categorical_sampling_frequencies():
  z = _results()["cat_z"]
  assert z.shape == (N_MC, 2, 3)
  np.testing.assert_array_equal(z.sum(-1), 1.0)
  pi = special.softmax(SAMPLE_CAT.astype(np.float64), -1)
  np.testing.assert_array_less(np.abs(z.mean(0) - pi), 4 * np.sqrt(pi * (1 - pi) / N_MC))


# -- Binary Concrete -----------------------------------------------------------------------------


def test_binary_concrete_density_integrates_to_one_and_matches_logistic():
  r = _results()
  mass = np.trapezoid(np.exp(r["logistic_lp"].astype(np.float64)), LOGISTIC_Y)
  assert abs(mass - 1.0) < 1e-4
  # y = (l + L)/τ is Logistic(l/τ, 1/τ): the distrax density is an independent computation
  np.testing.assert_allclose(r["logistic_lp"], r["logistic_ref"], rtol=1e-4, atol=1e-4)


def test_relaxed_bernoulli_density_on_unit_interval():
  """x = σ(y): Maddison et al.'s density on (0, 1), by change of variables from logit space."""
  logits, tau, x = -0.4, 0.8, UNIT_X
  a = np.exp(logits)
  closed = (np.log(tau * a) + (-tau - 1) * (np.log(x) + np.log1p(-x))
            - 2 * np.log(a * x ** -tau + (1 - x) ** -tau))
  np.testing.assert_allclose(_results()["unit_lp"] - np.log(x) - np.log1p(-x), closed,
                             rtol=1e-4, atol=1e-4)


def test_binary_concrete_sampling():
  r = _results()
  y = r["bc_y"].astype(np.float64)
  assert y.shape == (N_MC, 3)
  p = special.expit(BC_LOGITS.astype(np.float64))
  frac = (special.expit(y) > 0.5).mean(0)
  np.testing.assert_array_less(np.abs(frac - p), 4 * np.sqrt(p * (1 - p) / N_MC))  # P(σ(y)>½)=σ(l)
  np.testing.assert_array_equal(r["bc_hard"], (y > 0).astype(np.float32))
  # logistic mean l/τ, sd π/(τ√3): the sample mean within 4 s.e.
  sd = math.pi / (BC_TAU * math.sqrt(3))
  np.testing.assert_array_less(np.abs(y.mean(0) - BC_LOGITS / BC_TAU), 4 * sd / math.sqrt(N_MC))
  np.testing.assert_allclose(r["bc_grad"], 3 / BC_TAU)  # reparameterized: dy/dl = 1/τ


# -- ExpConcrete / Concrete ----------------------------------------------------------------------


def test_exp_concrete_matches_concrete_and_binary_concrete():
  r = _results()
  y = r["exp_y"]
  assert y.shape == (5, 2, 3) and r["exp_concrete"].shape == (5, 2)
  np.testing.assert_allclose(special.logsumexp(y, -1), 0.0, atol=1e-5)  # on the log-simplex
  # change of variables x = exp(y) w.r.t. the symmetric measure dx / Π x_k
  np.testing.assert_allclose(r["concrete"], r["exp_concrete"] - y.sum(-1), rtol=1e-5, atol=1e-4)
  # n = 2: the ExpConcrete density is the Binary Concrete density of y_1 − y_2 (logits l_1 − l_2)
  np.testing.assert_allclose(r["exp_concrete2"], r["binary2"], rtol=1e-5, atol=1e-4)


def test_concrete_density_integrates_to_one_on_the_simplex():
  """Midpoint quadrature over (x_1, x_2) of the 2-simplex, n = 3, τ = 1.5 (a smooth density)."""
  _, h = _simplex_points()
  mass = float(np.exp(_results()["simplex_lp"].astype(np.float64)).sum() * h * h)
  assert abs(mass - 1.0) < 0.02  # the diagonal band left out holds < 1% here


def test_exp_concrete_argmax_frequencies():
  """argmax of an ExpConcrete sample is Categorical(softmax(l)) at any τ: 4 s.e."""
  pi = special.softmax(ARGMAX_LOGITS.astype(np.float64))
  np.testing.assert_array_less(np.abs(_results()["argmax"] - pi),
                               4 * np.sqrt(pi * (1 - pi) / N_MC))


def test_straight_through_value_and_gradient():
  r = _results()
  np.testing.assert_array_equal(r["st"], [0.0, 1.0])  # the hard value
  np.testing.assert_array_equal(r["st_grad"], [1.0, 2.0])  # the soft gradient
  np.testing.assert_array_equal(r["hard_cat"], [[0, 1, 0]])
  with pytest.raises(ValueError, match="same shape"):
    dd.straight_through(np.zeros(2), np.zeros(3))


# -- extreme logits and temperatures --------------------------------------------------------------


def test_extreme_logits_finite_values_and_gradients():
  r = _results()
  for v in r["extreme"]:
    assert np.all(np.isfinite(v))
  for g in jax.tree_util.tree_leaves(r["extreme_grad"]):
    assert np.all(np.isfinite(g))
  # the KLs are exact there: KL(σ(1e4) ‖ σ(−1e4)) = 1e4, KL of a point mass to uniform = log 3
  np.testing.assert_allclose(r["extreme"][1][0], BIG, rtol=1e-6)
  np.testing.assert_allclose(r["extreme"][3][1], math.log(3), rtol=1e-5)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_bad_temperature_is_rejected(bad):
  with pytest.raises(ValueError, match="temperature"):
    dd.binary_concrete_log_prob(np.zeros(2), np.zeros(2), bad)


def test_traced_temperature_under_jit():
  traced = _results()["traced"]
  assert traced.shape == (2,) and np.all(np.isfinite(traced))
