"""Tests for the distribution layer: numerics, posteriors, likelihoods, KL, networks, presets."""

from __future__ import annotations

import chex
import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jvae
from jvae.bounds import numerics as _numerics
from jvae.distributions.kl import analytic_kl, kl_per_dim
from jvae.distributions.likelihoods import BernoulliLikelihood, GaussianLikelihood, StableBernoulli
from jvae.models.networks import MLP, Decoder, Encoder
from jvae.distributions.posteriors import (
    FullCovarianceGaussian,
    FullCovGaussianPosterior,
    GaussianPosterior,
    TriangularAffine,
)

D = 3
BATCH = 2
FEATURES = 5
K = 4
N_MC = 200_000  # Monte-Carlo sample count for the covariance / KL estimates.

# float32 log-densities of magnitude ~10 agree to a few ulps; 1e-5 relative + 1e-4 absolute
# leaves room for the different summation orders (triangular solve vs. Cholesky-based distrax).
LOGP_TOL = {"rtol": 1e-5, "atol": 1e-4}


def _normal(seed, shape, scale=1.0):
  """Fixed-seed test data from numpy (no per-shape XLA compile, unlike jax.random eagerly)."""
  return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _uniform(seed, shape, lo, hi):
  return jnp.asarray(np.random.default_rng(seed).uniform(lo, hi, shape), jnp.float32)


def _init(module, seed, *args, scale=0.5):
  """Params with the structure ``module.init`` gives, filled with fixed-seed N(0, scale²) values.

  Every weight non-zero (lower's zero init included), and no eager initialiser compiles.
  """
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype), shapes)


def _sigmoid64(x):
  return 1.0 / (1.0 + np.exp(-x))


def _fullcov_params(seed=0):
  """loc (batch, d), σ in [0.5, 1.5] (batch, d), and a dense random L′ (batch, d, d)."""
  loc = _normal(seed, (BATCH, D))
  scale = _uniform(seed + 1, (BATCH, D), 0.5, 1.5)
  lower = _normal(seed + 2, (BATCH, D, D), 0.7)  # upper triangle + diagonal non-zero too
  return loc, scale, lower


def _reference_tri(scale, lower):
  """L = mask ⊙ L′ + diag(σ), built independently of the library."""
  return jnp.tril(lower, -1) + jax.vmap(jnp.diag)(scale)


# ------------------------------------------------------------------------------------------------
# 1. Full-covariance Gaussian.


class FullCovarianceTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_sample_and_log_prob_matches_multivariate_normal_tri(self):
    loc, scale, lower = _fullcov_params(0)

    def fn(loc, scale, lower, key):
      q = FullCovarianceGaussian(loc, scale, lower)
      z, log_q = q.sample_and_log_prob(seed=key, sample_shape=(K,))
      ref = distrax.MultivariateNormalTri(loc, scale_tri=_reference_tri(scale, lower))
      return z, log_q, ref.log_prob(z), q.log_prob(z), q.scale_tri

    z, log_q, log_ref, log_q_solve, tri = self.variant(fn)(loc, scale, lower, jax.random.key(1))
    chex.assert_shape(z, (K, BATCH, D))
    chex.assert_shape([log_q, log_ref, log_q_solve], (K, BATCH))
    np.testing.assert_allclose(tri, _reference_tri(scale, lower), rtol=0, atol=0)
    np.testing.assert_allclose(log_q, log_ref, **LOGP_TOL)
    np.testing.assert_allclose(log_q_solve, log_ref, **LOGP_TOL)
    # z really is μ + Lε: not degenerate (the off-diagonal part of L matters).
    assert np.abs(np.asarray(tri[:, 1, 0])).min() > 1e-3

  @chex.variants(with_jit=True, without_jit=True)
  def test_log_prob_on_arbitrary_points(self):
    loc, scale, lower = _fullcov_params(2)
    z = _normal(3, (K, BATCH, D), 3.0)  # far from typical samples

    def fn(loc, scale, lower, z):
      q = FullCovarianceGaussian(loc, scale, lower)
      ref = distrax.MultivariateNormalTri(loc, scale_tri=_reference_tri(scale, lower))
      return q.log_prob(z), ref.log_prob(z), q.log_prob(z[0]), ref.log_prob(z[0])

    lp, lp_ref, lp0, lp0_ref = self.variant(fn)(loc, scale, lower, z)
    chex.assert_shape([lp, lp_ref], (K, BATCH))
    chex.assert_shape([lp0, lp0_ref], (BATCH,))
    np.testing.assert_allclose(lp, lp_ref, **LOGP_TOL)
    np.testing.assert_allclose(lp0, lp0_ref, **LOGP_TOL)

  @chex.variants(with_jit=True, without_jit=True)
  def test_log_det_equals_autodiff_jacobian(self):
    loc, scale, lower = _fullcov_params(4)
    eps = _normal(5, (BATCH, D))

    def one(loc, scale, lower, eps):
      bij = TriangularAffine(loc, scale, lower)
      jac = jax.jacfwd(bij.forward)(eps)
      _, log_det = bij.forward_and_log_det(eps)
      _, ilog_det = bij.inverse_and_log_det(bij.forward(eps))
      return jac, jnp.linalg.slogdet(jac)[1], log_det, ilog_det

    jac, slogdet, log_det, ilog_det = self.variant(jax.vmap(one))(loc, scale, lower, eps)
    sum_log_sigma = np.sum(np.log(np.asarray(scale, np.float64)), -1)
    # The map is affine, so ∂z/∂ε is exactly L; slogdet goes through an LU, so allow 1e-5.
    np.testing.assert_allclose(jac, _reference_tri(scale, lower), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(slogdet, sum_log_sigma, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_det, sum_log_sigma, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ilog_det, -sum_log_sigma, rtol=1e-6, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_upper_triangle_and_diagonal_of_lower_are_ignored(self):
    loc, scale, lower = _fullcov_params(6)
    junk = _normal(7, lower.shape, 5.0)
    lower2 = jnp.tril(lower, -1) + jnp.triu(junk)  # same strict lower part, different rest
    z = _normal(8, (K, BATCH, D))

    def fn(lower, key):
      q = FullCovarianceGaussian(loc, scale, lower)
      s, lp = q.sample_and_log_prob(seed=key, sample_shape=(K,))
      return s, lp, q.log_prob(z)

    a = self.variant(fn)(lower, jax.random.key(9))
    b = self.variant(fn)(lower2, jax.random.key(9))
    for x, y in zip(a, b, strict=True):
      np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


def test_fullcov_sample_covariance_approaches_llt():
  loc, scale, lower = _fullcov_params(10)
  q = FullCovarianceGaussian(loc, scale, lower)
  z = np.asarray(q.sample(seed=jax.random.key(11), sample_shape=(N_MC,)), np.float64)
  tri = np.asarray(_reference_tri(scale, lower), np.float64)
  sigma = tri @ np.swapaxes(tri, -1, -2)
  np.testing.assert_allclose(q.covariance(), sigma, rtol=1e-5, atol=1e-6)
  for b in range(BATCH):
    emp = np.cov(z[:, b, :], rowvar=False)
    # Standard error of a sample covariance entry of a Gaussian: sqrt((Σ_ii Σ_jj + Σ_ij²) / n).
    diag = np.diag(sigma[b])
    se = np.sqrt((np.outer(diag, diag) + sigma[b] ** 2) / N_MC)
    # 5 standard errors: ~1e-6 chance per entry of a false failure (fixed key anyway).
    np.testing.assert_array_less(np.abs(emp - sigma[b]), 5 * se)
    se_mean = np.sqrt(diag / N_MC)
    # mean() is checked against the samples, not against the loc it was built from.
    np.testing.assert_array_less(np.abs(z[:, b].mean(0) - np.asarray(q.mean()[b])), 5 * se_mean)


def test_fullcov_posterior_head():
  head = FullCovGaussianPosterior(D, min_scale=1e-3)
  h = _normal(12, (BATCH, FEATURES))
  # Random non-zero L′ (the real init zeroes lower's kernel), so the mask is exercised. At scale
  # 0.5 the triangles' condition numbers are ≈ 57 and 10, so log q from ε and the log-prob of the
  # float32 z (a triangular solve) agree to ~1e-5 whatever the compiler's rounding; at scale 1.0
  # one is ≈ 2000, and a float32 solve of z is only good to ~1e-4.
  params = _init(head, 13, h, scale=0.5)
  p = params["params"]
  q = head.apply(params, h)
  assert isinstance(q, FullCovarianceGaussian)
  assert q.batch_shape == (BATCH,)
  assert q.event_shape == (D,)

  raw_lower = (h @ p["lower"]["kernel"] + p["lower"]["bias"]).reshape(BATCH, D, D)
  sigma = jax.nn.softplus(h @ p["scale"]["kernel"] + p["scale"]["bias"]) + 1e-3
  loc = h @ p["loc"]["kernel"] + p["loc"]["bias"]
  tri = _reference_tri(sigma, raw_lower)
  # The diagonal is softplus(raw) + 1e-3: a missing floor is ~1e-3 off, far above rtol.
  np.testing.assert_allclose(q.scale_tri, tri, rtol=1e-5, atol=1e-6)

  z, log_q = q.sample_and_log_prob(seed=jax.random.key(16), sample_shape=(K,))
  chex.assert_shape(z, (K, BATCH, D))
  chex.assert_shape(log_q, (K, BATCH))
  ref = distrax.MultivariateNormalTri(loc, scale_tri=tri)
  np.testing.assert_allclose(log_q, ref.log_prob(z), **LOGP_TOL)
  np.testing.assert_allclose(q.log_prob(z), ref.log_prob(z), **LOGP_TOL)


# ------------------------------------------------------------------------------------------------
# 2. Factorized Gaussian posterior.


def test_gaussian_posterior_scale_floor_and_shapes():
  head = GaussianPosterior(D, min_scale=0.05)
  h = _normal(20, (BATCH, FEATURES), 10.0)
  params = _init(head, 21, h)
  q = head.apply(params, h)
  assert isinstance(q, distrax.MultivariateNormalDiag)
  assert q.batch_shape == (BATCH,)
  assert q.event_shape == (D,)
  p = params["params"]
  raw = h @ p["scale"]["kernel"] + p["scale"]["bias"]
  assert np.asarray(raw).min() < -5  # premise: one σ sits on the floor (softplus(raw) < 0.01)
  np.testing.assert_allclose(q.scale_diag, jax.nn.softplus(raw) + 0.05, rtol=1e-6)
  np.testing.assert_allclose(q.loc, h @ p["loc"]["kernel"] + p["loc"]["bias"], rtol=1e-5,
                             atol=1e-5)
  z, log_q = q.sample_and_log_prob(seed=jax.random.key(22), sample_shape=(K,))
  chex.assert_shape(z, (K, BATCH, D))
  chex.assert_shape(log_q, (K, BATCH))
  ref = distrax.Independent(distrax.Normal(q.loc, q.scale_diag), 1)
  np.testing.assert_allclose(log_q, ref.log_prob(z), **LOGP_TOL)


class GaussianFloorTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_scale_driven_to_minus_1e4_hits_floor(self):
    min_scale = 1e-4
    head = GaussianPosterior(D, min_scale=min_scale)
    h = _normal(23, (BATCH, FEATURES))
    params = _init(head, 24, h)
    params["params"]["scale"]["bias"] = jnp.full((D,), -1e4)

    def fn(params, key):
      def mean_log_q(params):
        q = head.apply(params, h)
        z, log_q = q.sample_and_log_prob(seed=key, sample_shape=(K,))
        return jnp.mean(log_q), (q.scale_diag, z, log_q)

      return jax.value_and_grad(mean_log_q, has_aux=True)(params)

    (value, (scale, z, log_q)), grads = self.variant(fn)(params, jax.random.key(25))
    # softplus(-1e4) underflows to exactly 0, so σ is exactly the float32 floor.
    np.testing.assert_array_equal(scale, np.full((BATCH, D), np.float32(min_scale)))
    assert np.all(np.isfinite(z)) and np.all(np.isfinite(log_q)) and np.isfinite(value)
    # log q = log N(ε) − d log σ_min, ε = (z − μ)/σ_min: the −Σ log σ term is +9.21 per
    # dimension. Recovering ε from z − μ costs ~1e-3 relative precision at σ = 1e-4.
    loc = np.asarray(head.apply(params, h).loc, np.float64)
    eps = (np.asarray(z, np.float64) - loc) / min_scale
    want = np.sum(-0.5 * eps**2 - 0.5 * np.log(2 * np.pi), -1) - D * np.log(min_scale)
    np.testing.assert_allclose(log_q, want, atol=1e-2)
    for leaf in jax.tree.leaves(grads):
      assert np.all(np.isfinite(leaf))


# ------------------------------------------------------------------------------------------------
# 3. analytic_kl / kl_per_dim.


def _diag_pair(seed):
  q = (_normal(seed, (BATCH, D)), _uniform(seed + 1, (BATCH, D), 0.3, 2.0))
  p = (_normal(seed + 2, (D,), 0.5), _uniform(seed + 3, (D,), 0.5, 1.5))
  return q, p


class AnalyticKLTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_diag_vs_diag_matches_distrax_and_monte_carlo(self):
    (mq, sq), (mp, sp) = _diag_pair(30)

    def fn(mq, sq, mp, sp, key):
      q = distrax.MultivariateNormalDiag(mq, sq)
      p = distrax.MultivariateNormalDiag(mp, sp)
      z, log_q = q.sample_and_log_prob(seed=key, sample_shape=(N_MC,))
      mc = log_q - p.log_prob(z)
      return (analytic_kl(q, p), q.kl_divergence(p), kl_per_dim(q, p),
              jnp.mean(mc, 0), jnp.std(mc, 0))

    kl, kl_ref, per_dim, mc_mean, mc_std = self.variant(fn)(mq, sq, mp, sp, jax.random.key(31))
    chex.assert_shape([kl, kl_ref, mc_mean], (BATCH,))
    chex.assert_shape(per_dim, (BATCH, D))
    np.testing.assert_allclose(kl, kl_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(per_dim.sum(-1), kl, rtol=1e-6, atol=1e-6)
    # MC estimate: within 5 standard errors (std/√n) of the closed form.
    np.testing.assert_array_less(np.abs(mc_mean - kl), 5 * mc_std / np.sqrt(N_MC))

  @chex.variants(with_jit=True, without_jit=True)
  def test_fullcov_vs_diag_matches_distrax_and_monte_carlo(self):
    loc, scale, lower = _fullcov_params(32)
    _, (mp, sp) = _diag_pair(33)  # non-standard prior loc and scale

    def fn(loc, scale, lower, mp, sp, key):
      q = FullCovarianceGaussian(loc, scale, lower)
      p = distrax.MultivariateNormalDiag(mp, sp)
      ref_q = distrax.MultivariateNormalTri(loc, scale_tri=_reference_tri(scale, lower))
      z, log_q = q.sample_and_log_prob(seed=key, sample_shape=(N_MC,))
      mc = log_q - p.log_prob(z)
      std_p = jvae.standard_normal(D)
      return (analytic_kl(q, p), ref_q.kl_divergence(p), analytic_kl(q, std_p),
              ref_q.kl_divergence(std_p), jnp.mean(mc, 0), jnp.std(mc, 0))

    kl, kl_ref, kl_std, kl_std_ref, mc_mean, mc_std = self.variant(fn)(
        loc, scale, lower, mp, sp, jax.random.key(34))
    chex.assert_shape([kl, kl_ref, kl_std], (BATCH,))
    np.testing.assert_allclose(kl, kl_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kl_std, kl_std_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_less(np.abs(mc_mean - kl), 5 * mc_std / np.sqrt(N_MC))

  @chex.variants(with_jit=True, without_jit=True)
  def test_identical_and_nearly_identical_diag(self):
    (mq, _), (_, sp) = _diag_pair(35)
    sp = jnp.broadcast_to(sp, (BATCH, D))
    sq_near = sp * jnp.float32(1.0 + 1e-4)

    def fn(mq, sp, sq_near):
      p = distrax.MultivariateNormalDiag(mq, sp)
      same = analytic_kl(distrax.MultivariateNormalDiag(mq, sp), p)
      near = kl_per_dim(distrax.MultivariateNormalDiag(mq, sq_near), p)
      # The same formula with exp(2δ) − 1 instead of expm1(2δ), in float32, for contrast.
      delta = jnp.log(sq_near) - jnp.log(sp)
      naive = 0.5 * (jnp.exp(2.0 * delta) - 1.0 - 2.0 * delta)
      return same, near, naive

    same, near, naive = self.variant(fn)(mq, sp, sq_near)
    assert np.all(np.abs(np.asarray(same)) <= 1e-6)
    # float64 closed form on the exact float32 inputs the library saw (KL ≈ 1e-8 per dim).
    s_q, s_p = np.asarray(sq_near, np.float64), np.asarray(sp, np.float64)
    delta = np.log(s_q) - np.log(s_p)
    exact = 0.5 * (np.expm1(2 * delta) - 2 * delta)
    assert np.all(exact > 1e-9)
    rel = np.abs(np.asarray(near, np.float64) - exact) / exact
    # expm1 form: error is only the float32 rounding of log σ (~1e-7 abs on δ≈1e-4 → ~1e-3 rel);
    # exp(2δ) − 1 loses everything to cancellation (exp(2δ) ≈ 1.0002 carries ~6e-8 abs error).
    assert rel.max() < 2e-2, rel
    naive_rel = np.abs(np.asarray(naive, np.float64) - exact) / exact
    assert naive_rel.max() > 10 * rel.max()

  @chex.variants(with_jit=True, without_jit=True)
  def test_identical_fullcov_diag_kl_is_zero(self):
    _, (mp, sp) = _diag_pair(36)

    def fn(mp, sp):
      q = FullCovarianceGaussian(mp, sp, jnp.zeros((D, D)))
      return analytic_kl(q, distrax.MultivariateNormalDiag(mp, sp))

    # Σ (σ_i/S_i)² − d cancels to within float32 rounding of a sum of d ~1 terms.
    assert np.abs(float(self.variant(fn)(mp, sp))) <= 1e-5


@pytest.mark.parametrize("kind", ["tanh", "laplace"])
def test_analytic_kl_unsupported_pair_raises(kind):
  p = jvae.standard_normal(D)
  if kind == "tanh":
    q = distrax.Transformed(distrax.MultivariateNormalDiag(jnp.zeros(D), jnp.ones(D)),
                            distrax.Block(distrax.Tanh(), 1))
  else:
    q = distrax.Independent(distrax.Laplace(jnp.zeros(D), jnp.ones(D)), 1)
  with pytest.raises(ValueError, match="kl='sample'"):
    analytic_kl(q, p)


def test_kl_per_dim_rejects_fullcov():
  loc, scale, lower = _fullcov_params(37)
  q = FullCovarianceGaussian(loc, scale, lower)
  with pytest.raises(ValueError, match="factorized"):
    kl_per_dim(q, jvae.standard_normal(D))
  with pytest.raises(ValueError):
    kl_per_dim(jvae.standard_normal(D), q)


def test_kl_per_dim_broadcasts_standard_prior():
  (mq, sq), _ = _diag_pair(38)
  q = distrax.MultivariateNormalDiag(mq, sq)
  per_dim = kl_per_dim(q, jvae.standard_normal(D))
  chex.assert_shape(per_dim, (BATCH, D))
  m, s = np.asarray(mq, np.float64), np.asarray(sq, np.float64)
  np.testing.assert_allclose(per_dim, 0.5 * (m**2 + s**2 - 1 - 2 * np.log(s)),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(per_dim.sum(-1), analytic_kl(q, jvae.standard_normal(D)),
                             rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# 4. jvae.bounds.numerics.


class NumericsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_log_mean_exp_moderate(self):
    x = _normal(40, (6, 5), 3.0)
    f = self.variant(_numerics.log_mean_exp, static_argnums=1)
    x64 = np.asarray(x, np.float64)
    for axis in (0, 1):
      ref = np.log(np.mean(np.exp(x64), axis=axis))
      # float32 logsumexp of O(10) values: ~1e-6 relative.
      np.testing.assert_allclose(f(x, axis), ref, rtol=1e-5, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_log_mean_exp_extreme(self):
    f = self.variant(_numerics.log_mean_exp)
    big = jnp.array([1e4, -1e4, 1e4, 1e4 - 1.0])
    got = float(f(big))
    ref = 1e4 + np.log((2 + np.exp(-1.0) + np.exp(-2e4)) / 4)
    # float32 spacing at 1e4 is ~1e-3.
    assert np.isfinite(got) and abs(got - ref) < 2e-3
    neg = jnp.array([-1e4, -1e4, -1e4])
    assert abs(float(f(neg)) - (-1e4)) < 2e-3
    one_finite = jnp.array([-jnp.inf, -jnp.inf, 2.5, -jnp.inf])
    np.testing.assert_allclose(float(f(one_finite)), 2.5 - np.log(4.0), rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_gaussian_kl_matches_float64(self):
    mq, mp, lq, lp = (_normal(41 + i, (50,)) for i in range(4))
    got = self.variant(_numerics.gaussian_kl)(mq, lq, mp, lp)
    mq, lq, mp, lp = (np.asarray(a, np.float64) for a in (mq, lq, mp, lp))
    ref = lp - lq + (np.exp(2 * lq) + (mq - mp) ** 2) / (2 * np.exp(2 * lp)) - 0.5
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_bernoulli_log_prob_moderate(self):
    logits = jnp.linspace(-8.0, 8.0, 33)
    f = self.variant(_numerics.bernoulli_log_prob)
    l64 = np.asarray(logits, np.float64)
    for x in (0.0, 1.0, 0.3):
      got = f(logits, jnp.full_like(logits, x))
      p = _sigmoid64(l64)
      ref = x * np.log(p) + (1 - x) * np.log1p(-p)
      np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_bernoulli_log_prob_extreme_logits(self):
    logits = jnp.array([1e4, 1e4, -1e4, -1e4])
    x = jnp.array([1.0, 0.0, 1.0, 0.0])

    def fn(logits, x):
      return (_numerics.bernoulli_log_prob(logits, x),
              jax.grad(lambda lg: jnp.sum(_numerics.bernoulli_log_prob(lg, x)))(logits))

    val, grad = self.variant(fn)(logits, x)
    np.testing.assert_allclose(val, [0.0, -1e4, -1e4, 0.0], rtol=1e-6, atol=1e-6)
    # d/dl = x − sigmoid(l): exactly 0 for a right label, ±1 for a wrong one.
    np.testing.assert_allclose(grad, [0.0, -1.0, 1.0, 0.0], atol=1e-6)


# ------------------------------------------------------------------------------------------------
# 5. Likelihood heads.


def test_bernoulli_likelihood_shapes_and_distrax_match():
  head = BernoulliLikelihood((2, 3))
  z = _normal(50, (K, BATCH, D))
  params = _init(head, 51, z)
  p = head.apply(params, z)
  assert p.batch_shape == (K, BATCH)
  assert p.event_shape == (2, 3)
  x = jnp.asarray(np.random.default_rng(52).integers(0, 2, (BATCH, 2, 3)), jnp.float32)
  lp = p.log_prob(x)
  chex.assert_shape(lp, (K, BATCH))
  logits = (z @ params["params"]["logits"]["kernel"]
            + params["params"]["logits"]["bias"]).reshape(K, BATCH, 2, 3)
  ref = distrax.Bernoulli(logits=logits).log_prob(x).sum((-2, -1))
  np.testing.assert_allclose(lp, ref, rtol=1e-5, atol=1e-5)
  assert isinstance(p.distribution, StableBernoulli)


def test_bernoulli_likelihood_extreme_logits_finite():
  head = BernoulliLikelihood((2, 3))
  z = _normal(53, (K, BATCH, D))
  params = _init(head, 54, z)
  params["params"]["logits"]["kernel"] = jnp.zeros_like(params["params"]["logits"]["kernel"])
  params["params"]["logits"]["bias"] = jnp.array([1e4, -1e4, 1e4, -1e4, 1e4, -1e4])
  x = jnp.broadcast_to(jnp.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]]), (BATCH, 2, 3))

  def loss(params):
    return jnp.mean(head.apply(params, z).log_prob(x))

  lp = head.apply(params, z).log_prob(x)
  # Wrong labels at positions (0,1) [logit −1e4, x=1] and (0,2) [logit +1e4, x=0]: −2e4 total.
  np.testing.assert_allclose(lp, np.full((K, BATCH), -2e4), rtol=1e-6)
  grads = jax.grad(loss)(params)
  for leaf in jax.tree.leaves(grads):
    assert np.all(np.isfinite(leaf))
  # d/d bias_j = x_j − σ(l_j) (the same for every sample and point): 0 where the label is right,
  # +1 for x=1 at l=−1e4, −1 for x=0 at l=+1e4.
  np.testing.assert_allclose(grads["params"]["logits"]["bias"], [0, 1, -1, 0, 0, 0], atol=1e-6)


@pytest.mark.parametrize("learn_scale", [False, True])
def test_gaussian_likelihood_matches_distrax(learn_scale):
  head = GaussianLikelihood((2, 3), scale=0.7, learn_scale=learn_scale, min_scale=0.2)
  z = _normal(55, (K, BATCH, D))
  params = _init(head, 56, z)
  p = head.apply(params, z)
  assert p.batch_shape == (K, BATCH)
  assert p.event_shape == (2, 3)
  x = _normal(57, (BATCH, 2, 3))
  pp = params["params"]
  loc = (z @ pp["loc"]["kernel"] + pp["loc"]["bias"]).reshape(K, BATCH, 2, 3)
  if learn_scale:
    scale = jax.nn.softplus(z @ pp["scale"]["kernel"] + pp["scale"]["bias"]) + 0.2
    scale = scale.reshape(K, BATCH, 2, 3)
    assert np.all(np.asarray(p.distribution.scale) >= 0.2)
  else:
    assert "scale" not in pp
    scale = jnp.full_like(loc, 0.7)
  np.testing.assert_allclose(p.distribution.scale, scale, rtol=1e-6)
  ref = distrax.Normal(loc, scale).log_prob(x).sum((-2, -1))
  np.testing.assert_allclose(p.log_prob(x), ref, rtol=1e-5, atol=1e-5)


def test_gaussian_likelihood_learned_scale_floor():
  head = GaussianLikelihood((4,), learn_scale=True, min_scale=1e-3)
  z = _normal(58, (BATCH, D))
  params = _init(head, 59, z)
  params["params"]["scale"]["bias"] = jnp.full((4,), -1e4)
  p = head.apply(params, z)
  np.testing.assert_array_equal(p.distribution.scale, np.full((BATCH, 4), np.float32(1e-3)))
  x = jnp.zeros((BATCH, 4))
  grads = jax.grad(lambda prm: jnp.mean(head.apply(prm, z).log_prob(x)))(params)
  loc = np.asarray(p.distribution.loc, np.float64)
  want = np.sum(-0.5 * (loc / 1e-3) ** 2 - np.log(1e-3) - 0.5 * np.log(2 * np.pi), -1)
  np.testing.assert_allclose(p.log_prob(x), want, rtol=1e-5)
  for leaf in jax.tree.leaves(grads):
    assert np.all(np.isfinite(leaf))
  # At the floor softplus'(−1e4) = 0: no gradient reaches the raw scale.
  np.testing.assert_array_equal(grads["params"]["scale"]["bias"], 0.0)


# ------------------------------------------------------------------------------------------------
# 6. Networks and presets.


def _shapes(params):
  return jax.tree.map(lambda a: tuple(a.shape), params)


def test_mlp():
  mlp = MLP((4, 3))
  h = _normal(60, (BATCH, FEATURES))
  params = _init(mlp, 61, h)
  assert _shapes(params) == {"params": {
      "dense_0": {"kernel": (FEATURES, 4), "bias": (4,)},
      "dense_1": {"kernel": (4, 3), "bias": (3,)}}}
  out = mlp.apply(params, h)
  p = params["params"]
  ref = jnp.tanh(jnp.tanh(h @ p["dense_0"]["kernel"] + p["dense_0"]["bias"])
                 @ p["dense_1"]["kernel"] + p["dense_1"]["bias"])
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
  ident = MLP(())
  np.testing.assert_array_equal(ident.apply({}, h), h)
  relu = MLP((4,), activation=nn.relu)
  rp = _init(relu, 0, h)
  relu_out = relu.apply(rp, h)
  d0 = rp["params"]["dense_0"]
  np.testing.assert_allclose(relu_out, np.maximum(h @ d0["kernel"] + d0["bias"], 0), rtol=1e-6,
                             atol=1e-6)
  assert np.any(np.asarray(relu_out) == 0) and np.any(np.asarray(relu_out) > 0)  # premise


def test_encoder_flattens_and_decoder():
  enc = Encoder(MLP((8,)), GaussianPosterior(D))
  x = _uniform(62, (BATCH, 28, 28), 0.0, 1.0)
  params = _init(enc, 63, x, scale=0.05)
  assert params["params"]["network"]["dense_0"]["kernel"].shape == (784, 8)
  q = enc.apply(params, x)
  assert q.batch_shape == (BATCH,) and q.event_shape == (D,)
  q_flat = enc.apply(params, x.reshape(BATCH, 784))
  np.testing.assert_array_equal(q.loc, q_flat.loc)
  np.testing.assert_array_equal(q.scale_diag, q_flat.scale_diag)
  assert enc.latent_dim == D

  dec = Decoder(MLP((8,)), BernoulliLikelihood((28, 28)))
  z = _normal(64, (K, BATCH, D))
  dparams = _init(dec, 65, z)
  p = dec.apply(dparams, z)
  assert p.batch_shape == (K, BATCH) and p.event_shape == (28, 28)
  chex.assert_shape(p.log_prob(x), (K, BATCH))
  assert dec.event_shape == (28, 28)


def test_kingma2014_shapes():
  model = jvae.kingma2014()
  # eval_shape: the shapes without materialising (or compiling) the 784×500 initialisers.
  params = jax.eval_shape(model.init, jax.random.key(70), jnp.zeros((BATCH, 784)))
  assert _shapes(params) == {"params": {
      "encoder": {
          "network": {"dense_0": {"kernel": (784, 500), "bias": (500,)}},
          "head": {"loc": {"kernel": (500, 20), "bias": (20,)},
                   "scale": {"kernel": (500, 20), "bias": (20,)}}},
      "decoder": {
          "network": {"dense_0": {"kernel": (20, 500), "bias": (500,)}},
          "head": {"logits": {"kernel": (500, 784), "bias": (784,)}}}}}
  assert model.latent_dim == 20 and model.event_shape == (784,)
  assert model.encoder.network.activation is nn.tanh


def test_burda2015_shapes():
  model = jvae.burda2015()
  params = jax.eval_shape(model.init, jax.random.key(71), jnp.zeros((BATCH, 784)))
  assert _shapes(params) == {"params": {
      "encoder": {
          "network": {"dense_0": {"kernel": (784, 200), "bias": (200,)},
                      "dense_1": {"kernel": (200, 200), "bias": (200,)}},
          "head": {"loc": {"kernel": (200, 50), "bias": (50,)},
                   "scale": {"kernel": (200, 50), "bias": (50,)}}},
      "decoder": {
          "network": {"dense_0": {"kernel": (50, 200), "bias": (200,)},
                      "dense_1": {"kernel": (200, 200), "bias": (200,)}},
          "head": {"logits": {"kernel": (200, 784), "bias": (784,)}}}}}
  assert model.latent_dim == 50 and model.event_shape == (784,)


def test_mlp_vae_fullcov():
  model = jvae.mlp_vae(event_shape=(28, 28), latent_dim=D, hidden=(8,), posterior="fullcov")
  x = jnp.asarray(np.random.default_rng(72).integers(0, 2, (BATCH, 28, 28)), jnp.float32)
  params = model.init(jax.random.key(73), x)
  assert params["params"]["encoder"]["head"]["lower"]["kernel"].shape == (8, D * D)
  q = model.apply(params, x, method="encode")
  assert isinstance(q, FullCovarianceGaussian)
  assert q.batch_shape == (BATCH,) and q.event_shape == (D,)
  z, log_q = q.sample_and_log_prob(seed=jax.random.key(74), sample_shape=(K,))
  chex.assert_shape(log_q, (K, BATCH))
  p = model.apply(params, z, method="decode")
  chex.assert_shape(p.log_prob(x), (K, BATCH))
  prior = model.prior_distribution()
  kl = analytic_kl(q, prior)
  chex.assert_shape(kl, (BATCH,))
  ref = distrax.MultivariateNormalTri(q.loc, scale_tri=q.scale_tri).kl_divergence(prior)
  np.testing.assert_allclose(kl, ref, rtol=1e-5, atol=1e-5)


def test_mlp_vae_rejects_unknown_names():
  with pytest.raises(ValueError, match="nope"):
    jvae.mlp_vae(posterior="nope")
  with pytest.raises(ValueError, match="nope"):
    jvae.mlp_vae(likelihood="nope")
