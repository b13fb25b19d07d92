"""Mixed precision as an explicit model wrapper: low-precision matmuls, float32 everything else.

``mixed_precision(model, dtype=jnp.bfloat16)`` returns a model meeting the same contract whose
every ``flax.linen.Dense`` multiplies in ``dtype`` with float32 accumulation, forward and
backward (Micikevicius et al. 2018, "Mixed precision training"; bf16 as in Kalamkar et al. 2019).
The parameters are the wrapped model's own float32 pytree, so optimizer state, checkpoints and
an evaluation at full precision are unchanged, and nothing changes unless a user asks for it:
on an accelerator the float32 default stays whatever the backend gives float32 dots (on recent
NVIDIA GPUs JAX's default matmul precision may use TF32; ``jax.default_matmul_precision`` sets
it). ``benchmarks/precision.py`` measures the speed and the effect on the bound.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jvae.models.contract import check_model

Array = jax.Array

DTYPES = {"bfloat16": jnp.bfloat16, "float16": jnp.float16}


def low_precision_matmul(x: Array, w: Array, dtype) -> Array:
  """``x @ w`` over x's last axis with both operands rounded to ``dtype``, accumulated in f32.

  Args:
    x: ``(..., m)`` float32 activations.
    w: ``(m, n)`` float32 weights.
    dtype: the operand dtype (``jnp.bfloat16`` or ``jnp.float16``).
  Returns:
    ``(..., n)`` float32. The gradient's two matmuls (x̄ = ȳ wᵀ, w̄ = xᵀ ȳ) round their operands
    the same way and accumulate in float32 too; x̄ and w̄ are float32.
  """
  if x.dtype != jnp.float32 or w.dtype != jnp.float32:
    raise TypeError(f"low_precision_matmul takes float32 x and w, got {x.dtype} and {w.dtype}")
  return _lp_matmul(x, w, dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _lp_matmul(x, w, dtype):
  return _matmul(x, w, dtype)


def _matmul(x, w, dtype):
  return jax.lax.dot_general(x.astype(dtype), w.astype(dtype), (((x.ndim - 1,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)


def _matmul_fwd(x, w, dtype):
  return _matmul(x, w, dtype), (x.astype(dtype), w.astype(dtype))


def _matmul_bwd(dtype, res, g):
  x, w = res
  g = g.astype(dtype)
  dx = jax.lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())),
                           preferred_element_type=jnp.float32)
  lead = tuple(range(g.ndim - 1))
  dw = jax.lax.dot_general(x, g, ((lead, lead), ((), ())), preferred_element_type=jnp.float32)
  return dx, dw


_lp_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _dense_interceptor(dtype):
  """A ``flax.linen.intercept_methods`` interceptor: ``Dense.__call__`` in low precision."""

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if (not isinstance(module, nn.Dense) or context.method_name != "__call__"
        or module.is_initializing() or kwargs or len(args) != 1):
      return next_fun(*args, **kwargs)
    (x,) = args
    y = low_precision_matmul(jnp.asarray(x, jnp.float32),
                             module.get_variable("params", "kernel"), dtype)
    if module.use_bias:
      y = y + module.get_variable("params", "bias")
    return y

  return interceptor


class MixedPrecision:
  """``model`` with every ``flax.linen.Dense`` matmul in a low precision; see the module doc.

  Every method of the wrapped model (``propose``, ``log_joint`` and the optional ones, e.g.
  ``sample_prior``, ``apply``) is available and runs with the interception; ``init`` is the
  wrapped model's, at full precision, so the parameters are identical. Layers other than
  ``nn.Dense`` (e.g. the masked MADE layers of an IAF) keep float32.

  Attributes:
    model: the wrapped model.
    dtype: the matmul operand dtype.
  """

  def __init__(self, model, dtype):
    self.model = model
    self.dtype = dtype
    self._interceptor = _dense_interceptor(dtype)

  def init(self, key, batch):
    return self.model.init(key, batch)

  def _wrap(self, fn):
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
      with nn.intercept_methods(self._interceptor):
        return fn(*args, **kwargs)

    return wrapped

  def propose(self, *args, **kwargs):
    return self._wrap(self.model.propose)(*args, **kwargs)

  def log_joint(self, *args, **kwargs):
    return self._wrap(self.model.log_joint)(*args, **kwargs)

  def __getattr__(self, name):
    if name.startswith("__") or name in ("model", "dtype", "_interceptor"):
      raise AttributeError(name)
    attr = getattr(self.model, name)
    # methods run under the interception; data and submodules (e.g. ``model.encoder``) as they are
    return self._wrap(attr) if callable(attr) and not isinstance(attr, (nn.Module, type)) else attr

  def __repr__(self) -> str:
    return f"MixedPrecision({self.model!r}, dtype={np.dtype(self.dtype).name})"


def mixed_precision(model, *, dtype="bfloat16") -> MixedPrecision:
  """``model`` whose ``nn.Dense`` matmuls use ``dtype`` operands and float32 accumulation.

  An option, never a default: the bound changes by the rounding of every matmul operand
  (``benchmarks/precision.py`` measures by how much, and the speed). Objectives, the trainer and
  ``fit`` take the result like any model; the parameters are the wrapped model's (float32).

  Args:
    model: any :class:`jvae.LatentModel` built from ``flax.linen.Dense`` layers (the presets).
    dtype: ``"bfloat16"`` (default; float32's range) or ``"float16"`` (more mantissa, a range
      that gradients can underflow: use loss scaling), or the jnp dtype itself.
  Returns:
    A :class:`MixedPrecision` model.
  Raises:
    TypeError: ``model`` does not meet the contract.
    ValueError: ``dtype`` is not bfloat16 or float16.
  """
  check_model(model)
  try:
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
  except TypeError:  # not a dtype at all
    name = None
  if name not in DTYPES:
    raise ValueError(f"mixed_precision dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
  if isinstance(model, MixedPrecision):
    model = model.model
  return MixedPrecision(model, DTYPES[name])
