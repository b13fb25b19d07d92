"""Variational posteriors q(z|x) as linen heads that emit distrax distributions (layer 2).

Every posterior here is explicitly reparameterized: ``q.sample_and_log_prob(seed=key,
sample_shape=(K,))`` draws ε ~ p(ε), returns z = g(ε, φ, x) with sample axis first, and in the same
pass log q(z|x) = log p(ε) − log|det ∂z/∂ε| (Kingma & Welling 2014, Sec. 2.4).

A head maps features ``h`` of shape ``(batch, features)`` to a distribution with batch shape
``(batch,)`` and event shape ``(latent_dim,)``.
"""

from __future__ import annotations

import chex
import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from flax.linen.linear import default_kernel_init

from jvae.bounds.numerics import check_number, softplus_scale

Array = jax.Array

DEFAULT_MIN_SCALE = 1e-4


def check_min_scale(min_scale, owner: str) -> None:
  """Raises ValueError unless a static ``min_scale`` is a finite number > 0 (``owner`` names it)."""
  check_number(min_scale, f"{owner} min_scale", minimum=0.0, strict=True)


def standard_normal(latent_dim: int, dtype=jnp.float32) -> distrax.MultivariateNormalDiag:
  """The standard normal N(0, I) over ``(latent_dim,)``: the default prior p(z)."""
  return distrax.MultivariateNormalDiag(
      jnp.zeros((latent_dim,), dtype), jnp.ones((latent_dim,), dtype))


class GaussianPosterior(nn.Module):
  """Factorized Gaussian q(z|x) = N(μ(x), diag σ(x)²), σ = softplus(·) + ``min_scale``.

  z = μ + σ ⊙ ε, log q = log N(ε; 0, I) − Σ_i log σ_i.

  Attributes:
    latent_dim: size d of z.
    min_scale: floor on σ, keeping log σ and 1/σ finite; a finite number > 0.
    fuse_heads: compute μ and σ's pre-activation with one matmul of width 2d instead of two of
      width d. The parameters are the same either way (two ``nn.Dense``, ``loc`` and ``scale``:
      names, shapes and init values), so checkpoints load into both; the outputs agree to float32
      rounding, not bitwise (the GEMM sums in another order). Fewer, larger dots: ~3% of a Burda
      et al. (2015) training step on a 2-core CPU (issue 15); the presets use it.

  Raises:
    ValueError: when built with a static ``min_scale`` that is 0, negative, NaN or infinite.
  """

  latent_dim: int
  min_scale: float = DEFAULT_MIN_SCALE
  fuse_heads: bool = False

  def __post_init__(self):
    check_min_scale(self.min_scale, "GaussianPosterior")
    super().__post_init__()

  @nn.compact
  def __call__(self, h: Array) -> distrax.MultivariateNormalDiag:
    chex.assert_rank(h, 2)
    d = self.latent_dim
    if not self.fuse_heads:
      loc = nn.Dense(d, name="loc")(h)
      return distrax.MultivariateNormalDiag(
          loc, softplus_scale(nn.Dense(d, name="scale")(h), self.min_scale))
    loc_kernel, loc_bias = _DenseParams(d, name="loc")(h.shape[-1])
    scale_kernel, scale_bias = _DenseParams(d, name="scale")(h.shape[-1])
    h, kernel, bias = promote_dtype(h, jnp.concatenate([loc_kernel, scale_kernel], axis=1),
                                    jnp.concatenate([loc_bias, scale_bias]))
    out = jax.lax.dot_general(h, kernel, (((1,), (0,)), ((), ()))) + bias
    return distrax.MultivariateNormalDiag(out[:, :d], softplus_scale(out[:, d:], self.min_scale))


class _DenseParams(nn.Module):
  """The parameters of ``nn.Dense(features)`` (names, shapes, initialisers and so init values all
  the same) returned as ``(kernel, bias)`` instead of applied, so that heads can share a matmul."""

  features: int

  @nn.compact
  def __call__(self, fan_in: int) -> tuple[Array, Array]:
    kernel = self.param("kernel", default_kernel_init, (fan_in, self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    return kernel, bias


class TriangularAffine(distrax.Bijector):
  r"""z = μ + L ε with L = L_mask ⊙ L′ + diag(σ), L_mask strictly lower-triangular.

  Because L is lower-triangular with diagonal σ, log|det ∂z/∂ε| = Σ_i log σ_i exactly, with no
  determinant or decomposition (Kingma et al. 2016, Sec. 3 / the design's full-covariance form).

  Args:
    loc: μ, shape ``(..., d)``.
    scale_diag: σ > 0, shape ``(..., d)``.
    lower: L′, shape ``(..., d, d)``; only its strictly lower triangle is used.
  """

  def __init__(self, loc: Array, scale_diag: Array, lower: Array):
    super().__init__(event_ndims_in=1, event_ndims_out=1)
    d = loc.shape[-1]
    chex.assert_shape(lower, (*lower.shape[:-2], d, d))
    self.loc = loc
    self.scale_diag = scale_diag
    self.lower = lower * jnp.tril(jnp.ones((d, d), lower.dtype), -1)

  @property
  def scale_tri(self) -> Array:
    """The full lower-triangular factor L."""
    return self.lower + self.scale_diag[..., :, None] * jnp.eye(self.loc.shape[-1])

  def forward_and_log_det(self, eps: Array):
    z = self.loc + jnp.einsum("...ij,...j->...i", self.lower, eps) + self.scale_diag * eps
    log_det = jnp.sum(jnp.log(self.scale_diag), -1)
    return z, jnp.broadcast_to(log_det, z.shape[:-1])

  def inverse_and_log_det(self, z: Array):
    tri = self.scale_tri
    shape = jnp.broadcast_shapes(z.shape[:-1], tri.shape[:-2])
    tri = jnp.broadcast_to(tri, (*shape, *tri.shape[-2:]))
    rhs = jnp.broadcast_to(z - self.loc, (*shape, z.shape[-1]))[..., None]
    eps = jax.scipy.linalg.solve_triangular(tri, rhs, lower=True)[..., 0]
    log_det = -jnp.sum(jnp.log(self.scale_diag), -1)
    return eps, jnp.broadcast_to(log_det, shape)


class FullCovarianceGaussian(distrax.Transformed):
  """N(μ, LLᵀ) as the pushforward of N(0, I) through :class:`TriangularAffine`.

  ``log_prob`` and ``sample_and_log_prob`` go through the bijector's Jacobian (Σ log σ_i); the
  closed-form KL to a diagonal Gaussian lives in :func:`jvae.analytic_kl`.
  """

  def __init__(self, loc: Array, scale_diag: Array, lower: Array):
    bij = TriangularAffine(loc, scale_diag, lower)
    base = distrax.MultivariateNormalDiag(jnp.zeros_like(loc), jnp.ones_like(loc))
    super().__init__(base, bij)

  @property
  def loc(self) -> Array:
    return self.bijector.loc

  @property
  def scale_diag(self) -> Array:
    return self.bijector.scale_diag

  @property
  def scale_tri(self) -> Array:
    return self.bijector.scale_tri

  def mean(self) -> Array:
    return self.loc

  def covariance(self) -> Array:
    tri = self.scale_tri
    return tri @ jnp.swapaxes(tri, -1, -2)


class FullCovGaussianPosterior(nn.Module):
  """Full-covariance Gaussian q(z|x) = N(μ, LLᵀ), L = L_mask ⊙ L′ + diag(σ).

  The network emits μ, σ (softplus with a floor) and L′ (d×d, masked to its strict lower triangle);
  z = μ + Lε and log q = log N(ε) − Σ log σ_i.

  Attributes:
    latent_dim: size d of z.
    min_scale: floor on σ, a finite number > 0.

  Raises:
    ValueError: when built with a static ``min_scale`` that is 0, negative, NaN or infinite.
  """

  latent_dim: int
  min_scale: float = DEFAULT_MIN_SCALE

  def __post_init__(self):
    check_min_scale(self.min_scale, "FullCovGaussianPosterior")
    super().__post_init__()

  @nn.compact
  def __call__(self, h: Array) -> FullCovarianceGaussian:
    chex.assert_rank(h, 2)
    d = self.latent_dim
    loc = nn.Dense(d, name="loc")(h)
    scale = softplus_scale(nn.Dense(d, name="scale")(h), self.min_scale)
    lower = nn.Dense(d * d, name="lower", kernel_init=nn.initializers.zeros)(h)
    return FullCovarianceGaussian(loc, scale, lower.reshape(*h.shape[:-1], d, d))
