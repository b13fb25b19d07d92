"""Test-session settings: a persistent XLA compilation cache shared by the session's processes.

Many tests compile the same small programs again — the CLI tests in every ``jvae`` subprocess they
start, other tests in fresh closures that lower to the same HLO — so the session keeps one
compilation cache in a temporary folder (every entry, however quick to compile) and removes it at
the end. Set ``JAX_COMPILATION_CACHE_DIR`` yourself to keep or place it elsewhere. It changes
compile time only: a cache hit is the same executable.

Compilation, not execution, is most of the suite's time on a CPU, and much of XLA's CPU compile
time is its fusion emitters; the tests' programs are small, so they compile with the older loop
emitters instead (``--xla_cpu_use_fusion_emitters=false`` in ``XLA_FLAGS``, inherited by
subprocesses; measured on ``tests/test_estimators.py`` back to back on a loaded 2-core machine:
50 s → 32 s). Dropping LLVM's backend optimisation too would save more but changes float32
rounding enough to move an ill-conditioned triangular solve past a 1e-5 tolerance, so it is not
done. Set ``JVAE_TEST_FULL_XLA=1`` to test with XLA's defaults.
"""

import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="jvae-test-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE  # inherited by subprocesses and notebooks
else:
  _CACHE = None
if not os.environ.get("JVAE_TEST_FULL_XLA"):
  _FAST = "--xla_cpu_use_fusion_emitters=false"
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST}".strip()
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _CACHE is not None:
    shutil.rmtree(_CACHE, ignore_errors=True)
