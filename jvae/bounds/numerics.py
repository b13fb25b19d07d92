"""Numerically stable primitives shared by the bounds and the distributions (layer 1).

Everything here is a pure function of arrays: no PRNG keys, no Flax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def log_mean_exp(log_w: Array, axis: int = 0) -> Array:
  """``log(mean(exp(log_w), axis))`` computed as ``logsumexp(log_w) - log K``.

  Stable for any magnitude of ``log_w``; ``-inf`` entries contribute zero weight.
  """
  k = log_w.shape[axis]
  return jax.nn.logsumexp(log_w, axis=axis) - jnp.log(jnp.asarray(k, log_w.dtype))


def softplus_scale(raw: Array, min_scale: float) -> Array:
  """A positive scale ``softplus(raw) + min_scale``: smooth, never below the floor."""
  return jax.nn.softplus(raw) + min_scale


def gaussian_kl(mu_q: Array, log_sigma_q: Array, mu_p: Array, log_sigma_p: Array) -> Array:
  r"""Elementwise KL(N(mu_q, sigma_q^2) || N(mu_p, sigma_p^2)).

  .. math::
     \mathrm{KL} = \tfrac12\Big[\frac{(\mu_q-\mu_p)^2}{\sigma_p^2}
        + \mathrm{expm1}(2\delta) - 2\delta\Big],\qquad \delta = \log\sigma_q - \log\sigma_p,

  which is exact and keeps full relative precision when ``sigma_q`` is close to ``sigma_p``
  (the naive ``sigma_q^2/sigma_p^2 - 1 - log(...)`` cancels catastrophically there).
  """
  delta = log_sigma_q - log_sigma_p
  sq = jnp.square((mu_q - mu_p) * jnp.exp(-log_sigma_p))
  return 0.5 * (sq + jnp.expm1(2.0 * delta) - 2.0 * delta)


def bernoulli_log_prob(logits: Array, x: Array) -> Array:
  r"""Elementwise ``log Bernoulli(x | sigmoid(logits))`` for x in [0, 1].

  Computes x·log σ(l) + (1−x)·log σ(−l) in the equivalent form ``x * l - softplus(l)`` (since
  log σ(l) = l − softplus(l) and log σ(−l) = −softplus(l)): one stable softplus per element instead
  of two log-sigmoids, finite with finite gradient x − σ(l) for any finite logit (e.g. ±1e4),
  unlike ``log(sigmoid(l))``, which returns −inf/NaN once σ(l) rounds to 0 or 1.
  """
  return x * logits - jax.nn.softplus(logits)
