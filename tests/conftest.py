"""Test-session settings: a persistent XLA compilation cache shared by the session's processes.

Many tests compile the same small programs again — the CLI tests in every ``jvae`` subprocess they
start, other tests in fresh closures that lower to the same HLO — so the session keeps one
compilation cache in a temporary folder (every entry, however quick to compile) and removes it at
the end. Set ``JAX_COMPILATION_CACHE_DIR`` yourself to keep or place it elsewhere. It changes
compile time only: a cache hit is the same executable.
"""

import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="jvae-test-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE  # inherited by subprocesses and notebooks
else:
  _CACHE = None
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _CACHE is not None:
    shutil.rmtree(_CACHE, ignore_errors=True)
