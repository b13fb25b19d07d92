"""Array-level variational bounds: log-weights in, one value per data point out (layer 1).

For research code that computes its own log-weights ``log_w[k, ...] = log p(x, z_k) - log q(z_k|x)``
with ``z_k ~ q(z|x)``. Every function is pure, shape-checked, and reduces only the sample axes, so
the result keeps the remaining (batch) axes. Higher is better; all are lower bounds on log p(x) in
expectation.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jvae.bounds.numerics import check_number, log_mean_exp

Array = jax.Array

__all__ = ["elbo", "iwae", "renyi", "miwae", "ciwae", "log_mean_exp"]


def _check(log_w: Array, axis: int, min_rank: int = 1) -> int:
  chex.assert_type(log_w, float)
  if log_w.ndim < min_rank:
    raise ValueError(f"log_w must have rank >= {min_rank}, got shape {log_w.shape}")
  axis = axis % log_w.ndim
  if log_w.shape[axis] < 1:
    raise ValueError(f"log_w needs at least one sample along axis {axis}, got shape {log_w.shape}")
  return axis


def elbo(log_w: Array, axis: int = 0) -> Array:
  r"""Monte-Carlo ELBO: :math:`\frac1K\sum_k \log w_k`.

  Kingma & Welling (2014), Eq. 6. Args: ``log_w`` of shape ``(K, ...)`` (sample axis ``axis``).
  Returns: shape ``log_w.shape`` without ``axis``.
  """
  axis = _check(log_w, axis)
  return jnp.mean(log_w, axis=axis)


def iwae(log_w: Array, axis: int = 0) -> Array:
  r"""Importance-weighted bound :math:`\log\frac1K\sum_k w_k` (Burda et al. 2015, Eq. 8).

  Computed as ``logsumexp(log_w, axis) - log K``. With K=1 it equals the ELBO, and it increases
  monotonically in expectation with K towards log p(x).
  """
  axis = _check(log_w, axis)
  return log_mean_exp(log_w, axis=axis)


def renyi(log_w: Array, alpha: float, axis: int = 0) -> Array:
  r"""Variational Rényi bound of order α (Li & Turner 2016, Eq. 11, MC form).

  .. math:: \mathcal L_\alpha = \frac{1}{1-\alpha}\log\frac1K\sum_k w_k^{1-\alpha}.

  α = 0 gives the IWAE bound (returned exactly), α → 1 the ELBO (returned exactly at α = 1), and
  for α in [0, 1] ELBO ≤ L_α ≤ IWAE on the same samples; α > 1 gives values below the ELBO. α < 0
  gives upper estimates of log p(x) in the large-K limit, so it is rejected.

  With t = 1 − α and a centre c (the largest log-weight for t > 0, the smallest for t < 0), every
  u_k = t (log w_k − c) is ≤ 0 and

  .. math::
     \mathcal L_\alpha = c + \frac1t \log s,\qquad
     s = \frac1K\sum_k e^{u_k} = 1 + \frac1K\sum_k \mathrm{expm1}(u_k) \in [1/K, 1].

  ``log s`` is taken as ``log1p(mean(expm1(u)))`` when s ≥ ½ (small t·spread, including α → 1,
  where log s ≈ t·mean(log w − c) and the form ``logsumexp(t log w) − log K`` would cancel
  catastrophically: 0.6 nats off at α = 1 − 1e-7 in float32) and as ``log(mean(exp(u)))`` when
  s < ½ (there the small terms would be lost in expm1 ≈ −1). Either way the error is a few float32
  ulps of the log-weights' magnitude and spread, for every α; −inf log-weights carry zero weight
  for α < 1. float16/bfloat16 inputs are computed in float32 and cast back.

  Args:
    log_w: shape ``(K, ...)`` (sample axis ``axis``).
    alpha: the order α, a static finite number ≥ 0 (positional or keyword).
    axis: the sample axis.

  Returns:
    shape ``log_w.shape`` without ``axis``.

  Raises:
    ValueError: ``alpha`` is NaN, infinite or negative.
    TypeError: ``alpha`` is a traced value.
  """
  axis = _check(log_w, axis)
  check_number(alpha, "renyi alpha", minimum=0.0)
  if isinstance(alpha, jax.core.Tracer):
    raise TypeError("renyi: expected a static alpha (a Python or NumPy number), got a traced value")
  alpha = float(alpha)
  if alpha == 1.0:
    return jnp.mean(log_w, axis=axis)
  if alpha == 0.0:
    return log_mean_exp(log_w, axis=axis)
  t = 1.0 - alpha
  lw = log_w.astype(jnp.promote_types(log_w.dtype, jnp.float32))
  c = jnp.max(lw, axis, keepdims=True) if t > 0 else jnp.min(lw, axis, keepdims=True)
  c = jax.lax.stop_gradient(jnp.where(jnp.isfinite(c), c, 0.0))  # L_α does not depend on c
  u = t * (lw - c)
  s = jnp.mean(jnp.exp(u), axis=axis)
  log_s = jnp.where(s < 0.5, jnp.log(s), jnp.log1p(jnp.mean(jnp.expm1(u), axis=axis)))
  return (jnp.squeeze(c, axis) + log_s / t).astype(log_w.dtype)


def miwae(log_w: Array) -> Array:
  r"""Multiply importance-weighted bound MIWAE(M, K) (Rainforth et al. 2018, Eq. 6).

  .. math:: \frac1M\sum_{m=1}^M \log\frac1K\sum_{k=1}^K w_{m,k}.

  Args:
    log_w: shape ``(M, K, ...)``: M independent groups of K samples.
  Returns: shape ``log_w.shape[2:]``. M = 1 is IWAE_K, K = 1 is an M-sample ELBO.
  """
  _check(log_w, 0, min_rank=2)
  return jnp.mean(log_mean_exp(log_w, axis=1), axis=0)


def ciwae(log_w: Array, beta: float, axis: int = 0) -> Array:
  r"""Combination bound CIWAE_β = β·ELBO + (1−β)·IWAE on the same K samples (Rainforth et al. 2018).

  Args:
    log_w: shape ``(K, ...)``.
    beta: weight in [0, 1] of the ELBO term; checked when static, a traced β is taken as given.

  Raises:
    ValueError: a static ``beta`` is NaN or outside [0, 1].
  """
  check_number(beta, "ciwae beta", minimum=0.0, maximum=1.0)
  axis = _check(log_w, axis)
  return beta * jnp.mean(log_w, axis=axis) + (1.0 - beta) * log_mean_exp(log_w, axis=axis)
