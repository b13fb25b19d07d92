"""The benchmarks' shared harness: data, compiling ahead of time, alternating timed rounds, goals,
and the JSON record.

A benchmark is a short script on top of it::

    compiled, compile_s = compile_ahead(epoch_fn, state, data, donate=True)
    runs = {"jvae": Carry(compiled, state, data), "other": ...}
    rounds = alternate(runs, rounds=5, warmup=1)          # rotation order, wall + CPU seconds
    rate = {name: steps / rounds.median(name) for name in runs}
    goals = check(GOALS, {"ratio": rate["jvae"] / rate["other"]})
    emit(record("throughput", {...}, goals=goals), args.out)

Goals are declared once (a script's ``GOALS``), checked once (:func:`check`, which logs the
verdicts) and stored in the record, from which ``_report`` renders them. Every script prints
human-readable lines to stderr and exactly one JSON line (its record) on stdout as its last
output.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

MNIST_SIZES = (50000, 10000, 10000)
MNIST_DIM = 784
RANDOM_PIXEL_MEAN = 0.13  # ≈ the pixel mean of binarized MNIST's training split.

_PACKAGES = ("jax", "jaxlib", "flax", "optax", "distrax", "numpy", "jvae")


def log(*args) -> None:
  """Print a human-readable line to stderr (stdout is reserved for the JSON record)."""
  print(*args, file=sys.stderr, flush=True)


def parser(doc: str) -> argparse.ArgumentParser:
  """An argument parser described by ``doc``'s first paragraph, with ``--quick`` and ``--out``."""
  p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true", help="the small run of `--suite quick`")
  p.add_argument("--out", default=None, help="also write the JSON record to this file")
  return p


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def random_binary(sizes: Sequence[int] = MNIST_SIZES, dim: int = MNIST_DIM, *,
                  p: float = RANDOM_PIXEL_MEAN, seed: int = 0) -> tuple[np.ndarray, ...]:
  """Bernoulli(p) ``float32`` arrays of shapes ``(n, dim)`` for each n in ``sizes``."""
  rng = np.random.default_rng(seed)
  return tuple((rng.random((n, dim)) < p).astype(np.float32) for n in sizes)


def load_mnist_or_random(split_sizes: Sequence[int] = MNIST_SIZES, *, dim: int = MNIST_DIM,
                         seed: int = 0):
  """Binarized MNIST from ``$JVAE_DATA_DIR`` if present, else random binary data of that shape.

  Never downloads. Returns ``(train, valid, test, name)``: ``float32`` numpy arrays of 0/1
  values and ``name``, ``"binarized_mnist"`` or ``"random"``.
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


# --------------------------------------------------------------------------------------------
# Compiling and timing
# --------------------------------------------------------------------------------------------


def compile_ahead(fn, *args, donate: bool = False):
  """``jax.jit(fn)`` lowered and compiled for ``args`` (the first donated if ``donate``).

  Returns ``(compiled, seconds)``, the seconds being trace + lower + XLA compile.
  """
  import jax

  start = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=0 if donate else ()).lower(*args).compile()
  return compiled, time.perf_counter() - start


def timed(fn: Callable, *args):
  """``(output, wall_s, cpu_s)`` of ``fn(*args)``, waiting for every output array.

  ``cpu_s`` is this process's CPU time (all its threads): on a machine shared with other jobs
  the steadier measure of work; the wall time is the throughput actually seen.
  """
  import jax

  cpu, start = time.process_time(), time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - start, time.process_time() - cpu


class Carry:
  """A zero-argument run for :func:`alternate` that advances ``state, out = fn(state, *args)``.

  ``fn`` is typically an epoch compiled with its state donated; ``state`` and ``out`` (e.g. the
  epoch's metrics) are the latest ones.
  """

  def __init__(self, fn: Callable, state, *args):
    self.fn, self.state, self.args, self.out = fn, state, args, None

  def __call__(self):
    self.state, self.out = self.fn(self.state, *self.args)
    return self.state, self.out


@dataclasses.dataclass
class Rounds:
  """Seconds per call of each run: ``wall[name]`` and ``cpu[name]`` over the timed rounds,
  ``first[name]`` the first warm-up call (None without warm-up), ``last[name]`` its last output."""

  wall: dict[str, list[float]]
  cpu: dict[str, list[float]]
  first: dict[str, float | None]
  last: dict[str, object]

  def median(self, name: str) -> float:
    return statistics.median(self.wall[name])

  def cpu_per_wall(self, name: str) -> float:
    """CPU seconds per wall second; below the usable cores when other processes took them."""
    return sum(self.cpu[name]) / sum(self.wall[name])

  def as_record(self) -> dict:
    return {"wall_s": self.wall, "cpu_s": self.cpu}


def alternate(runs: dict[str, Callable[[], object]], *, rounds: int, warmup: int = 0,
              on_round: Callable[[int, Rounds], None] | None = None) -> Rounds:
  """Time zero-argument ``runs`` alternately: ``warmup`` untimed calls of each, then ``rounds``
  rounds of one timed call of each, the order rotating every round so that every run takes every
  position (load from other processes hits all alike). ``on_round(r, rounds)`` after each round.
  """
  names = list(runs)
  result = Rounds({n: [] for n in names}, {n: [] for n in names}, dict.fromkeys(names),
                  dict.fromkeys(names))
  for name in names:
    for i in range(warmup):
      _, wall, _ = timed(runs[name])
      if i == 0:
        result.first[name] = wall
  for r in range(rounds):
    shift = r % len(names)
    for name in names[shift:] + names[:shift]:
      result.last[name], wall, cpu = timed(runs[name])
      result.wall[name].append(wall)
      result.cpu[name].append(cpu)
    if on_round is not None:
      on_round(r, result)
  return result


# --------------------------------------------------------------------------------------------
# Goals
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Goal:
  """A target for one measured value: ``value op target``, e.g. ``Goal("ratio", ">=", 0.97,
  "jvae / hand-written steps/s")``. ``unit`` follows the target in the report."""

  name: str
  op: str
  target: float
  text: str
  unit: str = ""

  def __post_init__(self):
    if self.op not in (">=", "<="):
      raise ValueError(f"op must be '>=' or '<=', got {self.op!r}")


def check(goals: Sequence[Goal], values: dict) -> list[dict]:
  """Each goal with its measured value (``values[goal.name]``; None when not measured on this
  device) and ``met`` (None when not measured); logs the verdicts. The record keeps this list."""
  out = []
  for g in goals:
    value = values.get(g.name)
    met = None if value is None else bool(value >= g.target if g.op == ">=" else
                                          value <= g.target)
    out.append({**dataclasses.asdict(g), "value": value, "met": met})
    verdict = {None: "not measured here", True: "met", False: "NOT met"}[met]
    shown = "-" if value is None else f"{value:.4g}"
    log(f"goal {g.text} {g.op} {g.target:g}{g.unit}: {shown} ({verdict})")
  return out


# --------------------------------------------------------------------------------------------
# The record
# --------------------------------------------------------------------------------------------


def _version(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def _git_commit() -> str | None:
  """HEAD of the repository, with ``+dirty`` when tracked files changed; None if unknown.

  The suite's own outputs (``benchmarks/results/``, which holds the committed plots, and
  ``BENCHMARKS.md``) do not count: a suite run rewrites them as it goes. A copy of the tree
  without its ``.git`` (a lent accelerator's) gives the commit in ``JVAE_GIT_COMMIT``, which
  ``benchmarks/device.sh prepare`` records from the checkout it copies.
  """
  root = pathlib.Path(__file__).resolve().parent.parent
  given = os.environ.get("JVAE_GIT_COMMIT", "").strip()
  if given:
    return given
  try:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                          text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":(exclude)benchmarks/results", ":(exclude)BENCHMARKS.md"],
                           cwd=root, capture_output=True, text=True, timeout=10,
                           check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return head + ("+dirty" if dirty else "")


def torch_device() -> str | None:
  """Where PyTorch runs beside JAX's backend: the CPU with a CPU, CUDA with a GPU; None when
  torch does not import or has no CUDA beside a GPU (the comparison would not be like with
  like)."""
  import jax

  try:
    import torch
  except ImportError:
    return None
  if jax.default_backend() == "cpu":
    return "cpu"
  return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else None


def torch_matmul_like_jax(device: str) -> str:
  """Set PyTorch's float32 matmul precision to JAX's default on ``device`` and return it.

  On CUDA, JAX's default float32 matmul may use TF32 (recent NVIDIA GPUs) while PyTorch's is
  full float32 unless asked: the PyTorch side gets ``"high"`` (TF32 allowed) so that neither
  side is timed at a precision the other does not use; if JAX's default there is full float32
  this favours PyTorch, not jvae. On the CPU both are float32 (``"highest"``, left as is).
  """
  import torch

  if device == "cuda":
    torch.set_float32_matmul_precision("high")
  return torch.get_float32_matmul_precision()


@contextlib.contextmanager
def highest_matmuls():
  """Float32 matmuls at full precision in JAX and (when imported) PyTorch inside the block.

  For checks of one implementation against another (a converted model's forward pass): at a
  GPU's default precision (TF32) both sides round to ~1e-3, more than such a check allows, and
  differently; the precision used for timing stays as it was outside the block.
  """
  import jax

  torch = sys.modules.get("torch")
  before = torch.get_float32_matmul_precision() if torch is not None else None
  try:
    if torch is not None:
      torch.set_float32_matmul_precision("highest")
    with jax.default_matmul_precision("highest"):
      yield
  finally:
    if torch is not None:
      torch.set_float32_matmul_precision(before)


def usable_cores() -> int:
  """The CPU cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def machine_info(packages: Sequence[str] = ()) -> dict:
  """Where and with what a benchmark ran: host, CPU, package versions (``packages`` besides
  jax, flax, optax, ...), JAX backend and device, commit and date."""
  import jax

  usable = usable_cores()
  device = jax.devices()[0]
  return {
      "platform": platform.platform(),
      "processor": platform.processor() or platform.machine(),
      "machine": platform.machine(),
      "cpu_count": os.cpu_count(),
      "cpu_usable": usable,
      "python": platform.python_version(),
      "versions": {name: _version(name) for name in (*_PACKAGES, *packages)},
      "jax_backend": jax.default_backend(),
      "device_kind": device.device_kind,
      "device_count": jax.device_count(),
      "git_commit": _git_commit(),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }


def record(benchmark: str, fields: dict, *, goals: list[dict] | None = None,
           packages: Sequence[str] = ()) -> dict:
  """A benchmark's record: its name, ``fields``, the checked ``goals`` and :func:`machine_info`."""
  out = {"benchmark": benchmark, **fields}
  if goals is not None:
    out["goals"] = goals
  return {**out, **machine_info(packages)}


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


def emit(rec: dict, out: str | os.PathLike | None = None) -> None:
  """Print ``rec`` as one JSON line on stdout; also write it to ``out`` (parents created)."""
  rec = _jsonable(rec)
  line = json.dumps(rec, allow_nan=False)
  if out:
    path = pathlib.Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=2, allow_nan=False) + "\n")
  sys.stdout.write(line + "\n")
  sys.stdout.flush()
