"""Numerically stable primitives shared by the bounds and the distributions (layer 1).

Everything here is a pure function of arrays: no PRNG keys, no Flax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def check_number(value, what: str, *, minimum: float | None = None, strict: bool = False,
                 maximum: float | None = None) -> None:
  r"""Raises ``ValueError("<what>: expected ..., got <value>")`` unless ``value`` is a valid number.

  Valid means a real (not bool) number, or array of them, that is finite, :math:`\ge` ``minimum``
  (:math:`>` if ``strict``) if given, and :math:`\le` ``maximum`` if given. Only values known
  while a function is traced or an object is built are checked: Python and NumPy numbers and
  concrete arrays. A traced value (under ``jit``, ``vmap`` or ``grad``) can't be inspected and is
  let through unchecked.

  Args:
    value: the hyper-parameter.
    what: its name in the message, e.g. ``"GaussianLikelihood scale"``.
    minimum: lower limit, or None.
    strict: whether ``minimum`` itself is excluded.
    maximum: upper limit (included), or None.
  """
  if isinstance(value, jax.core.Tracer):
    return
  expected = "a finite number"
  if minimum is not None and maximum is not None:
    expected += f" in {'(' if strict else '['}{minimum:g}, {maximum:g}]"
  elif minimum is not None:
    expected += f" {'>' if strict else '>='} {minimum:g}"
  elif maximum is not None:
    expected += f" <= {maximum:g}"
  arr = np.asarray(value)
  numeric = jnp.issubdtype(arr.dtype, jnp.integer) or jnp.issubdtype(arr.dtype, jnp.floating)
  if numeric:
    arr = arr.astype(np.float64)
    ok = np.isfinite(arr)
    if minimum is not None:
      ok &= (arr > minimum) if strict else (arr >= minimum)
    if maximum is not None:
      ok &= arr <= maximum
    if np.all(ok):
      return
  shown = value if numeric else repr(value)
  raise ValueError(f"{what}: expected {expected}, got {shown}")


def log_mean_exp(log_w: Array, axis: int = 0) -> Array:
  """``log(mean(exp(log_w), axis))`` computed as ``logsumexp(log_w) - log K``.

  Stable for any magnitude of ``log_w``; ``-inf`` entries contribute zero weight.
  """
  k = log_w.shape[axis]
  return jax.nn.logsumexp(log_w, axis=axis) - jnp.log(jnp.asarray(k, log_w.dtype))


def softplus_scale(raw: Array, min_scale: float) -> Array:
  """A positive scale ``softplus(raw) + min_scale``: smooth, never below the floor.

  Raises:
    ValueError: if ``min_scale`` is static and not a finite number > 0 (the scale could then be
      0, negative or NaN, and the density undefined).
  """
  check_number(min_scale, "min_scale", minimum=0.0, strict=True)
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
  r"""Elementwise ``log Bernoulli(x | sigmoid(logits))`` for x in [0, 1], NaN for any other x.

  Computes x·log σ(l) + (1−x)·log σ(−l) in the equivalent form ``x * l - softplus(l)`` (since
  log σ(l) = l − softplus(l) and log σ(−l) = −softplus(l)): one stable softplus per element instead
  of two log-sigmoids, finite with finite gradient x − σ(l) for any finite logit (e.g. ±1e4),
  unlike ``log(sigmoid(l))``, which returns −inf/NaN once σ(l) rounds to 0 or 1.

  Outside the support, x < 0, x > 1, ±inf or NaN, the density is undefined and the result is NaN
  in that entry (the formula alone would give a finite number, or +inf for x = ±inf), so a bound
  built on it is NaN, never a number. Entries with x in [0, 1] are bitwise ``x * l - softplus(l)``.
  The invalid x is replaced by 0 before the formula too ("double where"), so the gradient of an
  invalid entry is 0 rather than NaN, and masking that entry out leaves finite gradients. It is all
  one elementwise expression, which XLA fuses into a single pass.
  """
  valid = (x >= 0) & (x <= 1)  # False for NaN
  x_safe = jnp.where(valid, x, 0)
  return jnp.where(valid, x_safe * logits - jax.nn.softplus(logits), jnp.nan)
