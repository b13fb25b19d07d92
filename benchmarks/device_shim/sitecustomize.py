"""Aliases that tfp-nightly's JAX substrate (which distrax imports) reads at import time and that
a newer jax may have dropped: ``jax.core.pytype_aval_mappings`` (deprecated in jax 0.10) and
``jax.interpreters.xla.canonicalize_dtype_handlers``.

``benchmarks/device.sh run`` puts this file on the path only when ``import distrax`` fails on the
lent machine (whose image has another jax than the one jvae's CI tests), and says so in its log:
the failure itself is a finding about the dependency, this shim only lets the benchmarks run.
"""

try:
  import jax
  import jax.interpreters.xla as _xla
  from jax._src import core as _core
  from jax._src import dtypes as _dtypes
except Exception:  # a shim must never stop the interpreter from starting
  pass
else:
  if not hasattr(jax.core, "pytype_aval_mappings") and hasattr(_core, "pytype_aval_mappings"):
    jax.core.pytype_aval_mappings = _core.pytype_aval_mappings
  if (not hasattr(_xla, "canonicalize_dtype_handlers")
      and hasattr(_dtypes, "canonicalize_value_handlers")):
    _xla.canonicalize_dtype_handlers = _dtypes.canonicalize_value_handlers
