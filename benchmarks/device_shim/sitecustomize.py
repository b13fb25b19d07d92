"""Aliases that tfp-nightly's JAX substrate (which distrax imports) reads at import time and that
a newer jax may have dropped: ``jax.core.pytype_aval_mappings`` (deprecated in jax 0.10) and
``jax.interpreters.xla.canonicalize_dtype_handlers``.

``benchmarks/device.sh run`` puts this file on the path only when ``import distrax`` fails on the
lent machine (whose image has another jax than the one jvae's CI tests), and says so in its log:
the failure itself is a finding about the dependency, this shim only lets the benchmarks run.
Each alias is set on its own: one that cannot be set leaves the other. Nothing here may stop the
interpreter from starting.
"""


def _alias_pytype_aval_mappings():
  import jax
  from jax._src import core

  if not hasattr(jax.core, "pytype_aval_mappings"):
    jax.core.pytype_aval_mappings = core.pytype_aval_mappings


def _alias_canonicalize_dtype_handlers():
  import jax.interpreters.xla as xla
  from jax._src import dtypes

  if not hasattr(xla, "canonicalize_dtype_handlers"):
    xla.canonicalize_dtype_handlers = dtypes.canonicalize_value_handlers


for _alias in (_alias_pytype_aval_mappings, _alias_canonicalize_dtype_handlers):
  try:
    _alias()
  except Exception:  # see the docstring
    pass
