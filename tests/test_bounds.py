"""Array-level bounds (jvae.bounds) against float64 numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jvae import bounds


def _np_lme(a, axis=0):
  m = a.max(axis=axis, keepdims=True)
  return (m + np.log(np.mean(np.exp(a - m), axis=axis, keepdims=True))).squeeze(axis)


@pytest.fixture
def log_w():
  return np.random.default_rng(0).normal(-100.0, 3.0, size=(7, 5)).astype(np.float32)


@pytest.mark.parametrize("jit", [False, True])
def test_elbo_iwae_match_numpy(log_w, jit):
  f = jax.jit if jit else (lambda g: g)
  a = log_w.astype(np.float64)
  np.testing.assert_allclose(f(bounds.elbo)(log_w), a.mean(0), rtol=1e-6)
  np.testing.assert_allclose(f(bounds.iwae)(log_w), _np_lme(a), rtol=1e-6)
  np.testing.assert_allclose(bounds.iwae(log_w.T, axis=1), _np_lme(a), rtol=1e-6)


def test_iwae_orders_and_limits(log_w):
  # Jensen: ELBO <= IWAE for the same samples; one sample: equal.
  assert np.all(bounds.elbo(log_w) <= bounds.iwae(log_w) + 1e-5)
  np.testing.assert_allclose(bounds.iwae(log_w[:1]), log_w[0], rtol=1e-7)


def test_iwae_stable_for_huge_log_weights():
  lw = jnp.array([[1e4, -1e4], [-jnp.inf, -1e4]], jnp.float32)
  out = bounds.iwae(lw)
  np.testing.assert_allclose(out, [1e4 - np.log(2), -1e4], rtol=1e-6)
  # d IWAE / d log w_k is the normalised weight w_k / Σ w: exactly one-hot here.
  g = jax.grad(lambda w: bounds.iwae(w).sum())(jnp.array([[1e4], [-1e4]]))
  np.testing.assert_array_equal(g, [[1.0], [0.0]])


def test_renyi_limits(log_w):
  a = log_w.astype(np.float64)
  np.testing.assert_array_equal(bounds.renyi(log_w, 0.0), bounds.iwae(log_w))
  np.testing.assert_array_equal(bounds.renyi(log_w, 1.0), bounds.elbo(log_w))
  np.testing.assert_allclose(bounds.renyi(log_w, 0.5), _np_lme(0.5 * a) / 0.5, rtol=1e-6)
  # Strictly decreasing in alpha for weights that are not all equal (power-mean inequality).
  vals = np.stack([bounds.renyi(log_w, al) for al in (0.0, 0.3, 0.7, 1.0, 2.0)])
  assert np.all(np.diff(vals, axis=0) < 0)


EPS32 = float(np.finfo(np.float32).eps)
ALPHAS = (0.0, 1e-3, 0.5, 0.9, 1 - 1e-3, 1 - 1e-5, 1 - 1e-7, 1.0, 1.5, 2.0)


def _renyi64(a, alpha, axis=0):
  """L_α in float64 with the largest (t > 0) or smallest (t < 0) log-weight factored out."""
  t = 1.0 - alpha
  if t == 0.0:
    return a.mean(axis)
  c = a.max(axis, keepdims=True) if t > 0 else a.min(axis, keepdims=True)
  return (c + np.log(np.mean(np.exp(t * (a - c)), axis, keepdims=True)) / t).squeeze(axis)


def _renyi_cases():
  rng = np.random.default_rng(1)
  return {
      # The example: four log-weights near -10.
      "four_near_-10": np.array([[-10.0], [-10.1], [-9.9], [-10.05]], np.float32),
      "tiny_spread": (-10.0 + 1e-3 * rng.standard_normal((8, 5))).astype(np.float32),
      "spread_50": (-10.0 + rng.uniform(-25.0, 25.0, (64, 5))).astype(np.float32),
      "spread_50_at_-1000": (-1000.0 + rng.uniform(-25.0, 25.0, (64, 5))).astype(np.float32),
      # Many small weights next to a few large ones: their sum is lost if taken through expm1.
      "K_4096_spread_50": (-10.0 + rng.uniform(-25.0, 25.0, (4096, 2))).astype(np.float32),
      # One dominant weight and 16383 that are e^-17.36 ≈ 2.9e-8 of it at α = 0.5: each is lost in
      # expm1 ≈ −1 + 2.9e-8 (rounds to −1), 4.7e-4 nats in all.
      "one_dominant_K_16384": np.concatenate(
          [[[-10.0]], np.full((16383, 1), -10.0 - 2 * 17.356)]).astype(np.float32),
      # (1 − α)·spread beyond float32's exp range (88) for α = 2.
      "spread_200": (-100.0 + rng.uniform(-100.0, 100.0, (64, 5))).astype(np.float32),
  }


RENYI_CASES = _renyi_cases()


def _renyi_tol(a):
  """A few float32 ulps of the log-weights' magnitude plus spread (measured: at most 0.6 eps)."""
  return 4 * EPS32 * (np.abs(a).max() + np.ptp(a, axis=0).max())


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("case", sorted(RENYI_CASES))
def test_renyi_matches_float64_for_every_alpha(case, jit):
  """Float32 L_α within a few ulps of float64 on the same values, as α → 1 too.

  The direct ``logsumexp((1-α) log w) / (1-α)`` is 0.6 nats off at α = 1 − 1e-7 on the four
  log-weights near −10, and ~1e-3 at α = 1 − 1e-5."""
  lw = RENYI_CASES[case]
  a = lw.astype(np.float64)
  tol = _renyi_tol(a)
  for alpha in ALPHAS:
    f = jax.jit(bounds.renyi, static_argnums=1) if jit else bounds.renyi
    got = np.asarray(f(lw, alpha), np.float64)
    err = np.abs(got - _renyi64(a, alpha)).max()
    assert err <= tol, (case, alpha, err, tol)


@pytest.mark.parametrize("case", sorted(RENYI_CASES))
def test_renyi_between_elbo_and_iwae(case):
  """For α in [0, 1]: ELBO ≤ L_α ≤ IWAE on the same samples, up to float32 round-off of each."""
  lw = RENYI_CASES[case]
  tol = _renyi_tol(lw.astype(np.float64))
  lo, hi = np.asarray(bounds.elbo(lw)), np.asarray(bounds.iwae(lw))
  for alpha in (a for a in ALPHAS if a <= 1.0):
    val = np.asarray(bounds.renyi(lw, alpha))
    assert np.all(lo - tol <= val) and np.all(val <= hi + tol), (case, alpha, val - lo, hi - val)


def test_renyi_gradient_is_the_normalised_tempered_weights():
  r"""∂L_α/∂log w_k = w_k^{1−α} / Σ_j w_j^{1−α}: 1/K as α → 1, the IWAE weights at α = 0."""
  lw = RENYI_CASES["spread_50"]
  a = lw.astype(np.float64)
  for alpha in (0.0, 0.5, 1 - 1e-7, 2.0):
    g = jax.grad(lambda w, al=alpha: bounds.renyi(w, al).sum())(jnp.asarray(lw))
    t = 1.0 - alpha
    ref = np.exp(t * (a - a.max(0)))
    np.testing.assert_allclose(g, ref / ref.sum(0), rtol=1e-4, atol=1e-7, err_msg=str(alpha))


def test_renyi_with_zero_weights():
  """A weight of 0 (log w = −inf) adds nothing to Σ w^{1−α} for α < 1 and makes it +inf for
  α > 1 (L_α = −inf); gradients stay finite and the zero weight gets none."""
  lw = np.array([[-3.0, 1.0], [-np.inf, 2.0], [-2.5, -np.inf]], np.float32)
  a = lw.astype(np.float64)
  for alpha in (0.5, 1 - 1e-5):
    got = bounds.renyi(jnp.asarray(lw), alpha)
    t = 1.0 - alpha
    ref = np.log(np.mean(np.exp(t * a), 0)) / t
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    g = jax.grad(lambda w, al=alpha: bounds.renyi(w, al).sum())(jnp.asarray(lw))
    assert np.all(np.isfinite(g)) and g[1, 0] == 0 and g[2, 1] == 0
    np.testing.assert_allclose(g.sum(0), [1.0, 1.0], rtol=1e-6)
  np.testing.assert_array_equal(bounds.renyi(jnp.asarray(lw), 2.0), [-np.inf, -np.inf])


def test_renyi_keywords_axis_and_dtype(log_w):
  positional = bounds.renyi(log_w, 0.25)
  np.testing.assert_array_equal(bounds.renyi(log_w=log_w.T, alpha=0.25, axis=1), positional)
  np.testing.assert_array_equal(bounds.renyi(log_w, alpha=np.float32(0.25)), positional)
  half = bounds.renyi(jnp.asarray(RENYI_CASES["tiny_spread"], jnp.float16), 1 - 1e-5)
  assert half.dtype == jnp.float16
  ref = _renyi64(RENYI_CASES["tiny_spread"].astype(np.float16).astype(np.float64), 1 - 1e-5)
  np.testing.assert_allclose(np.asarray(half, np.float64), ref, atol=2e-2)  # float16 ulp at 10


def test_miwae_and_ciwae(log_w):
  a = log_w.astype(np.float64)
  grouped = a[:6].reshape(2, 3, 5)
  np.testing.assert_allclose(bounds.miwae(log_w[:6].reshape(2, 3, 5)),
                             _np_lme(grouped, axis=1).mean(0), rtol=1e-6)
  np.testing.assert_allclose(bounds.miwae(log_w[None]), bounds.iwae(log_w), rtol=1e-6)
  np.testing.assert_allclose(bounds.miwae(log_w[:, None]), a.mean(0), rtol=1e-6)
  np.testing.assert_allclose(bounds.ciwae(log_w, 0.25), 0.25 * a.mean(0) + 0.75 * _np_lme(a),
                             rtol=1e-6)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    bounds.ciwae(log_w, 1.5)


def test_bad_inputs():
  with pytest.raises(ValueError, match="rank"):
    bounds.miwae(jnp.zeros((3,)))
  with pytest.raises(AssertionError):
    bounds.iwae(jnp.zeros((3, 2), jnp.int32))
