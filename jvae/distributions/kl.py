"""Closed-form KL divergences between posteriors and priors (layer 2)."""

from __future__ import annotations

import distrax
import jax
import jax.numpy as jnp

from jvae.bounds.numerics import gaussian_kl
from jvae.distributions.posteriors import FullCovarianceGaussian

Array = jax.Array


def _is_diag_gaussian(d) -> bool:
  return isinstance(d, distrax.MultivariateNormalDiag)


def kl_per_dim(q: distrax.Distribution, p: distrax.Distribution) -> Array:
  """Per-dimension KL(q_j ‖ p_j) for factorized Gaussians q and p; shape ``batch + (d,)``.

  Raises:
    ValueError: if either distribution is not a factorized (diagonal) Gaussian.
  """
  if not (_is_diag_gaussian(q) and _is_diag_gaussian(p)):
    raise ValueError(
        "a per-dimension KL (free bits) needs factorized Gaussian q and p "
        f"(distrax.MultivariateNormalDiag); got q={type(q).__name__}, p={type(p).__name__}")
  return gaussian_kl(q.loc, jnp.log(q.scale_diag), p.loc, jnp.log(p.scale_diag))


def analytic_kl(q: distrax.Distribution, p: distrax.Distribution) -> Array:
  r"""KL(q ‖ p) in closed form, one value per batch element.

  Diagonal Gaussians use the ``expm1`` form of :func:`jvae.bounds.numerics.gaussian_kl`. A
  full-covariance q = N(μ, LLᵀ) against a diagonal p = N(m, S²) uses
  ½[Σ_ij L_ij²/S_i² + Σ_i (μ_i−m_i)²/S_i² − d + 2Σ log S_i − 2Σ log σ_i]. Other pairs are
  delegated to distrax.

  Raises:
    ValueError: no closed form is known for the pair (e.g. an IAF posterior); use ``kl="sample"``.
  """
  if _is_diag_gaussian(q) and _is_diag_gaussian(p):
    return jnp.sum(kl_per_dim(q, p), axis=-1)
  if isinstance(q, FullCovarianceGaussian) and _is_diag_gaussian(p):
    inv_s = 1.0 / p.scale_diag
    tri = q.scale_tri * inv_s[..., :, None]
    d = q.loc.shape[-1]
    quad = jnp.sum(jnp.square((q.loc - p.loc) * inv_s), -1)
    return 0.5 * (jnp.sum(jnp.square(tri), (-2, -1)) + quad - d
                  + 2.0 * jnp.sum(jnp.log(p.scale_diag), -1)
                  - 2.0 * jnp.sum(jnp.log(q.scale_diag), -1))
  try:
    return q.kl_divergence(p)
  except (NotImplementedError, TypeError, ValueError, AttributeError) as err:
    raise ValueError(
        f"kl='analytic' needs a closed-form KL between {type(q).__name__} and "
        f"{type(p).__name__}, and none is known ({type(err).__name__}: {err}). "
        "Use kl='sample' for the Monte-Carlo estimate log q(z|x) - log p(z).") from err
