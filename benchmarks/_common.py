"""Shared helpers for the benchmark scripts: machine info, data, timing and JSON output.

Every benchmark prints human-readable progress to stderr and exactly one JSON line (its record) on
stdout as its last output, so ``python benchmarks/x.py | tail -n 1`` is machine-readable.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np

MNIST_SIZES = (50000, 10000, 10000)
MNIST_DIM = 784
RANDOM_PIXEL_MEAN = 0.13  # ≈ the pixel mean of binarized MNIST's training split.

_PACKAGES = ("jax", "jaxlib", "flax", "optax", "distrax", "numpy", "jvae")


def log(*args) -> None:
  """Print a human-readable line to stderr (stdout is reserved for the JSON record)."""
  print(*args, file=sys.stderr, flush=True)


def _version(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def _git_commit() -> str | None:
  """HEAD of the repository, with ``+dirty`` when tracked files changed; None if unknown."""
  root = pathlib.Path(__file__).resolve().parent.parent
  try:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                          text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                           capture_output=True, text=True, timeout=10, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return head + ("+dirty" if dirty else "")


def machine_info() -> dict:
  """Where and with what a benchmark ran: host, CPU, package versions, JAX backend and device."""
  import jax

  try:
    usable = len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    usable = os.cpu_count()
  device = jax.devices()[0]
  return {
      "platform": platform.platform(),
      "processor": platform.processor() or platform.machine(),
      "machine": platform.machine(),
      "cpu_count": os.cpu_count(),
      "cpu_usable": usable,
      "python": platform.python_version(),
      "versions": {name: _version(name) for name in _PACKAGES},
      "jax_backend": jax.default_backend(),
      "device_kind": device.device_kind,
      "device_count": jax.device_count(),
      "git_commit": _git_commit(),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }


def random_binary(sizes: Sequence[int] = MNIST_SIZES, dim: int = MNIST_DIM, *,
                  p: float = RANDOM_PIXEL_MEAN, seed: int = 0) -> tuple[np.ndarray, ...]:
  """Bernoulli(p) ``float32`` arrays of shapes ``(n, dim)`` for each n in ``sizes``."""
  rng = np.random.default_rng(seed)
  return tuple((rng.random((n, dim)) < p).astype(np.float32) for n in sizes)


def load_mnist_or_random(split_sizes: Sequence[int] = MNIST_SIZES, *, dim: int = MNIST_DIM,
                         seed: int = 0):
  """Binarized MNIST from ``$JVAE_DATA_DIR`` if present, else random binary data of that shape.

  Never downloads. ``split_sizes`` (train, valid, test) and ``dim`` set the shape of the random
  stand-in (MNIST's own by default); real MNIST is returned whole.

  Returns:
    ``(train, valid, test, name)``: ``float32`` numpy arrays of 0/1 values and ``name``, either
    ``"binarized_mnist"`` or ``"random"``.
  """
  import jvae.io.data

  try:
    ds = jvae.data.load("binarized_mnist", download=False)
  except FileNotFoundError as err:
    log(f"binarized MNIST not available ({err}); using random binary data "
        f"(p={RANDOM_PIXEL_MEAN}) of sizes {tuple(split_sizes)} x {dim}")
    train, valid, test = random_binary(split_sizes, dim, seed=seed)
    return train, valid, test, "random"
  return ds.train, ds.valid, ds.test, ds.name


def timeit_epoch(fn, *args, with_cpu: bool = False):
  """Call ``fn(*args)``, wait for every output array, and return ``(output, seconds)``.

  With ``with_cpu=True`` returns ``(output, wall_s, cpu_s)``, ``cpu_s`` being the CPU seconds of
  this process (all its threads): on a machine shared with other jobs it is the steadier measure
  of work, while the wall time is the throughput actually seen.
  """
  import jax

  cpu_start, start = time.process_time(), time.perf_counter()
  out = fn(*args)
  jax.block_until_ready(out)
  wall = time.perf_counter() - start
  if with_cpu:
    return out, wall, time.process_time() - cpu_start
  return out, wall


def _jsonable(value):
  """Plain JSON values: numpy/JAX scalars and arrays become Python ones; NaN/±inf become strings."""
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
    return _jsonable(value.tolist())
  if isinstance(value, float) and not np.isfinite(value):
    return str(value)  # "nan", "inf", "-inf": strict JSON has no literal for them.
  return value


def emit(record: dict, out: str | os.PathLike | None = None) -> None:
  """Print ``record`` as one JSON line on stdout; also write it to ``out`` (parents created)."""
  record = _jsonable(record)
  line = json.dumps(record, allow_nan=False)
  if out is not None:
    path = pathlib.Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
  sys.stdout.write(line + "\n")
  sys.stdout.flush()
