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
  g = jax.grad(lambda w: bounds.iwae(w).sum())(jnp.array([[1e4], [-1e4]]))
  assert np.all(np.isfinite(g))


def test_renyi_limits(log_w):
  a = log_w.astype(np.float64)
  np.testing.assert_allclose(bounds.renyi(log_w, 0.0), bounds.iwae(log_w), rtol=1e-6)
  np.testing.assert_allclose(bounds.renyi(log_w, 1.0), a.mean(0), rtol=1e-6)
  # alpha -> 1 converges to the ELBO continuously.
  np.testing.assert_allclose(bounds.renyi(log_w, 1.0 - 1e-3), a.mean(0), rtol=1e-4)
  half = _np_lme(0.5 * a) / 0.5
  np.testing.assert_allclose(bounds.renyi(log_w, 0.5), half, rtol=1e-6)
  # Monotone non-increasing in alpha.
  vals = [np.asarray(bounds.renyi(log_w, al)) for al in (0.0, 0.3, 0.7, 1.0)]
  assert all(np.all(vals[i] >= vals[i + 1] - 1e-4) for i in range(3))


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
