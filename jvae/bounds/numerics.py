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


_PRODUCT_BLOCK = 64  # Π of 64 factors in (1, 2] is ≤ 2^64: far inside float32's range


def bernoulli_log_prob_sum(logits: Array, x: Array, *, event_ndims: int = 1) -> Array:
  r"""``bernoulli_log_prob(logits, x)`` summed over the trailing ``event_ndims`` axes, fused.

  With softplus(l) = max(l, 0) + log(1 + e^{−|l|}),

  .. math:: \sum_i x_i l_i − \mathrm{softplus}(l_i)
     = \sum_i \big(x_i l_i − \max(l_i, 0)\big) − \sum_b \log \prod_{i \in b} (1 + e^{−|l_i|})

  over blocks b of 64 pixels: one ``exp`` per element and one ``log`` per block instead of an
  ``exp`` and a ``log1p`` per element (each factor lies in (1, 2], so a block's product cannot
  overflow; it adds ≤ 64 roundings per block, about 4e-6 nats, to the float32 sum). The value
  equals the summed elementwise form to float32 round-off, finite for logits of ±1e4; it is NaN
  where any x of the event lies outside [0, 1] (NaN and ±inf included), like
  :func:`bernoulli_log_prob`. The derivative is the closed form Σ (x − σ(l))·dl (+ l·dx), a
  ``custom_jvp``, so forward and reverse mode both apply and an invalid entry's gradient is 0.

  Args:
    logits: ``(..., *event)`` float logits.
    x: broadcastable to ``logits``.
    event_ndims: how many trailing axes are summed (≥ 1).
  Returns:
    ``(...)``: the broadcast batch shape.
  """
  if not isinstance(event_ndims, int) or isinstance(event_ndims, bool) or event_ndims < 1:
    raise ValueError(f"event_ndims must be an int >= 1, got {event_ndims!r}")
  logits, x = jnp.broadcast_arrays(logits, jnp.asarray(x, logits.dtype))
  if logits.ndim < event_ndims:
    raise ValueError(f"logits of shape {logits.shape} have fewer than event_ndims="
                     f"{event_ndims} axes")
  batch = logits.shape[:logits.ndim - event_ndims]
  flat = (*batch, int(np.prod(logits.shape[logits.ndim - event_ndims:], dtype=np.int64)))
  return _bernoulli_sum(logits.reshape(flat), x.reshape(flat))


def _block_size(n: int) -> int:
  """The largest divisor of ``n`` in [32, 64] (784 → 56), so no padding is needed; else 64."""
  if n <= _PRODUCT_BLOCK:
    return n
  return next((b for b in range(_PRODUCT_BLOCK, 31, -1) if n % b == 0), _PRODUCT_BLOCK)


def _bernoulli_parts(lg, x):
  valid = (x >= 0) & (x <= 1)  # False for NaN
  x_safe = jnp.where(valid, x, 0)
  e = jnp.exp(-jnp.abs(lg))
  block = _block_size(lg.shape[-1])
  factors = 1 + e
  if lg.shape[-1] % block:  # no divisor in [32, 64]: pad with factors of 1
    pad = -lg.shape[-1] % block
    factors = jnp.pad(factors, [(0, 0)] * (lg.ndim - 1) + [(0, pad)], constant_values=1)
  blocks = jnp.prod(factors.reshape(*lg.shape[:-1], -1, block), axis=-1)
  value = jnp.sum(x_safe * lg - jnp.maximum(lg, 0), -1) - jnp.sum(jnp.log(blocks), -1)
  return jnp.where(jnp.all(valid, -1), value, jnp.nan), valid, x_safe, e


@jax.custom_jvp
def _bernoulli_sum(lg, x):
  return _bernoulli_parts(lg, x)[0]


@_bernoulli_sum.defjvp
def _bernoulli_sum_jvp(primals, tangents):
  lg, x = primals
  dl, dx = tangents
  value, valid, x_safe, e = _bernoulli_parts(lg, x)
  sigmoid = jnp.where(lg >= 0, 1, e) / (1 + e)  # σ(lg), from the same e^{−|lg|}
  tangent = jnp.sum((x_safe - sigmoid) * dl + jnp.where(valid, lg, 0) * dx, -1)
  return value, tangent
