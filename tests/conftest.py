"""Test-session settings: fast XLA compilation, and a persistent compilation cache shared by the
session's processes.

Compilation, not execution, is most of the suite's time on a CPU: the tests' programs are small
and most run once. So the suite compiles with XLA:CPU's older loop emitters instead of its fusion
emitters (``--xla_cpu_use_fusion_emitters=false``; measured on ``tests/test_estimators.py`` back
to back on a loaded 2-core machine: 50 s → 32 s) and without LLVM's backend optimisation
(``--xla_backend_optimization_level=0``; a one-epoch ``jvae train`` of the LVAE 21.5 s → 11.2 s,
the whole suite's test time 1,268 → 840 core-seconds). Both go into ``XLA_FLAGS``, inherited by
the subprocesses tests start. Results stay valid float32 programs, but rounding moves: a value
may differ from the optimised program's by an ulp or so, which every tolerance allows for.

What does not allow for it is a claim about the optimised program itself, e.g. that two
different compiled programs give *bitwise* the same parameters. A test that asserts one is
marked ``@pytest.mark.xla_defaults``: the suite then runs it again in a child pytest with XLA's
defaults (and the user's own ``XLA_FLAGS``), and it passes if that child passes. The notebooks
run with XLA's optimisation too (``tests/test_notebooks.py``): they execute more than they
compile. Set ``JVAE_TEST_FULL_XLA=1`` to run the whole suite with XLA's defaults.

Many tests compile the same small programs again — the CLI tests in every ``jvae`` subprocess they
start, other tests in fresh closures that lower to the same HLO — so the session keeps one
compilation cache in a temporary folder (every entry, however quick to compile) and removes it at
the end. Set ``JAX_COMPILATION_CACHE_DIR`` yourself to keep or place it elsewhere. It changes
compile time only: a cache hit is the same executable (the cache key includes ``XLA_FLAGS``).
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="jvae-test-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE  # inherited by subprocesses and notebooks
else:
  _CACHE = None
USER_XLA_FLAGS = os.environ.get("JVAE_TEST_USER_XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
FAST_XLA_FLAGS = ("--xla_cpu_use_fusion_emitters=false", "--xla_backend_optimization_level=0")
FULL_XLA = bool(os.environ.get("JVAE_TEST_FULL_XLA"))
if not FULL_XLA:
  os.environ["JVAE_TEST_USER_XLA_FLAGS"] = USER_XLA_FLAGS  # what a child with defaults restores
  os.environ["XLA_FLAGS"] = " ".join([USER_XLA_FLAGS, *FAST_XLA_FLAGS]).strip()
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
_ROOT = pathlib.Path(__file__).resolve().parents[1]


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "xla_defaults: asserts a property of XLA's optimised program (e.g. bitwise "
      "equal results of two programs); run in a child pytest with XLA's defaults")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
  """A ``xla_defaults`` test, under the fast flags, runs in a child pytest with XLA's defaults."""
  if FULL_XLA or pyfuncitem.get_closest_marker("xla_defaults") is None:
    return None
  env = {**os.environ, "JVAE_TEST_FULL_XLA": "1", "XLA_FLAGS": USER_XLA_FLAGS}
  child = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
       "--rootdir", str(_ROOT), pyfuncitem.nodeid],
      cwd=_ROOT, env=env, capture_output=True, text=True, check=False)
  if child.returncode != 0:
    pytest.fail(f"{pyfuncitem.nodeid} failed with XLA's default compilation:\n"
                f"{child.stdout[-6000:]}\n{child.stderr[-2000:]}", pytrace=False)
  return True


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _CACHE is not None:
    shutil.rmtree(_CACHE, ignore_errors=True)
