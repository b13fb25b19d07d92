"""Run directories of ``jvae train``: claiming a new one, reading a saved one, resuming it.

Rules, each enforced here at its root:

* Every path is made absolute at the boundary (``files.absolute``), so a relative ``--out`` or
  ``--resume`` names the same run for training, resuming, ``jvae eval`` and ``jvae sample``.
* A new run claims its directory atomically: the default ``runs/<date-time>`` is created with
  ``mkdir`` that fails when the name exists (then ``-1``, ``-2``, … is tried), and the claim on an
  explicit ``--out`` is the exclusive creation of its ``config.json``. Two runs never share one.
* A run that fails or is interrupted before its first checkpoint removes what it created, so the
  corrected command with the same ``--out`` just works.
* ``--resume`` takes its options from the saved ``config.json``; of the options given with it,
  only those in ``RESUME_MAY_CHANGE`` are applied, and any other that contradicts the saved run is
  a usage error naming the saved and the given value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import shlex
import shutil
import signal
import threading
from collections.abc import Callable

import numpy as np

from jvae.cli.args import RESUME_MAY_CHANGE, UsageError, device_problems
from jvae.io import checkpoint, files

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
_MAX_SUFFIX = 10_000


@dataclasses.dataclass
class Claim:
  """A run directory this process has claimed, and what it created there."""

  path: pathlib.Path
  created_dir: bool
  preexisting: frozenset[str] = frozenset()  # names in an existing --out before the claim

  def release(self) -> bool:
    """Removes what the run created, unless it wrote a checkpoint; True if it removed it.

    A directory the claim created goes entirely; in an existing ``--out``, only the entries that
    were not there before the claim.
    """
    if checkpoint.all_steps(self.path / CHECKPOINTS):
      return False
    if self.created_dir:
      shutil.rmtree(self.path, ignore_errors=True)
      return True
    for entry in self.path.iterdir():
      if entry.name not in self.preexisting:
        if entry.is_dir() and not entry.is_symlink():
          shutil.rmtree(entry, ignore_errors=True)
        else:
          entry.unlink(missing_ok=True)
    return True


def allocate_default(root, clock: Callable[[], str] = files.now_stamp) -> tuple[pathlib.Path, bool]:
  """Creates and returns a new, unique ``root/<clock()>[-n]`` directory (``created`` = True).

  The name is taken by ``mkdir`` itself, which fails if another process took it first, so two
  runs started in the same second get different directories.
  """
  root = files.absolute(root)
  root.mkdir(parents=True, exist_ok=True)
  stamp = clock()
  for n in range(_MAX_SUFFIX):
    path = root / (stamp if n == 0 else f"{stamp}-{n}")
    try:
      path.mkdir()
    except FileExistsError:
      continue
    return path, True
  raise UsageError(f"{root}: no free run directory name for {stamp}")


def claim(out, cfg: dict, *, root="runs", clock: Callable[[], str] = files.now_stamp) -> Claim:
  """Claims a run directory for a new run and writes its ``config.json`` there.

  Args:
    out: the ``--out`` directory, or None for a new ``root/<date-time>``.
    cfg: the run's config, written to ``config.json``.
    root: parent of the default run directories.
    clock: the date-time stamp (a parameter for tests).

  Returns:
    The claim, to ``release`` if the run fails before its first checkpoint.

  Raises:
    UsageError: ``out`` already holds a run (a ``config.json``), or is not a directory.
  """
  if out is None:
    path, created = allocate_default(root, clock)
  else:
    path = files.absolute(out)
    if (path / CONFIG).exists():
      raise _holds_a_run(path)
    try:
      path.mkdir(parents=True)
      created = True
    except FileExistsError:
      if not path.is_dir():
        raise UsageError(f"--out {path} exists and is not a directory") from None
      created = False
  preexisting = frozenset() if created else frozenset(os.listdir(path))
  try:
    files.create_json(path / CONFIG, cfg)
  except FileExistsError:
    raise _holds_a_run(path) from None  # another process claimed it in the meantime
  except BaseException:
    if created:
      shutil.rmtree(path, ignore_errors=True)
    raise
  return Claim(path, created, preexisting)


def _holds_a_run(path: pathlib.Path) -> UsageError:
  return UsageError(f"{path} already holds a run; use --resume {path} or another --out")


def load_config(run_dir: pathlib.Path, *, what: str) -> dict:
  """The saved ``config.json`` of ``run_dir``; a UsageError when it is missing or unreadable."""
  path = run_dir / CONFIG
  if not path.is_file():
    raise UsageError(f"{what} {run_dir}: not a run directory (no {CONFIG})")
  try:
    cfg = json.loads(path.read_text())
  except ValueError as err:
    raise UsageError(f"{what} {run_dir}: {CONFIG} is not valid JSON ({err})") from None
  if not isinstance(cfg, dict):
    raise UsageError(f"{what} {run_dir}: {CONFIG} does not hold a config")
  return cfg


def resumed_config(saved: dict, args, given, config_keys) -> dict:
  """The config of a resumed run: the saved one, with the options that may change applied.

  Args:
    saved: the run's ``config.json``.
    args: the parsed ``jvae train`` namespace.
    given: ``dest`` names of the options given on the command line.
    config_keys: the option names a config holds.

  Raises:
    UsageError: naming every given option that contradicts the saved run, saved vs given.
  """
  run_dir = files.absolute(args.resume)
  problems = []
  if "out" in given and args.out is not None and files.absolute(args.out) != run_dir:
    problems.append(f"--out {args.out} (a resumed run stays in {run_dir})")
  for key in sorted(set(given) & set(config_keys) - set(RESUME_MAY_CHANGE)):
    want, have = _normal(getattr(args, key)), _normal(saved.get(key))
    if want != have:
      problems.append(f"--{key.replace('_', '-')}: saved {_show(have)}, given {_show(want)}")
  if problems:
    may = [f"--{k.replace('_', '-')}" for k in RESUME_MAY_CHANGE]
    raise UsageError(f"--resume {run_dir}: options contradict the saved run: "
                     + "; ".join(problems) + f". Give only {', '.join(may[:-1])} or {may[-1]} "
                     "with --resume, or start a new run")
  cfg = dict(saved)
  for key in RESUME_MAY_CHANGE:
    if key in given and key in config_keys:
      cfg[key] = getattr(args, key)
  problems = device_problems(cfg)
  if problems:
    raise UsageError(f"--resume {run_dir}: " + "; ".join(problems))
  return cfg


def _normal(value):
  """A value as config.json holds it (tuples are lists there)."""
  if isinstance(value, (list, tuple)):
    return [_normal(v) for v in value]
  return value


def _show(value) -> str:
  if value is None:
    return "none"
  if isinstance(value, list):
    return " ".join(str(v) for v in value)
  return str(value)


def write_config(run_dir: pathlib.Path, cfg: dict) -> None:
  """Rewrites ``config.json`` (atomically) if ``cfg`` differs from it."""
  path = run_dir / CONFIG
  if json.loads(path.read_text()) != json.loads(files.dumps(cfg)):
    files.write_json(path, cfg)


def truncate_metrics(path: pathlib.Path, last_epoch: int) -> None:
  """Drops the ``metrics.jsonl`` lines after ``last_epoch`` (and any half-written line).

  The kept lines are written to a temporary file that replaces the old one, so an interruption
  leaves either file whole.
  """
  if not path.exists():
    return
  keep = []
  for line in path.read_text().splitlines():
    try:
      row = json.loads(line)
    except ValueError:
      continue  # the tail of a write a SIGKILL cut short
    if isinstance(row, dict) and isinstance(row.get("epoch"), int) and row["epoch"] <= last_epoch:
      keep.append(line)
  text = "".join(line + "\n" for line in keep)
  if text == path.read_text():
    return
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def metrics_rows(record: dict, num_seeds: int) -> list[dict]:
  """``metrics.jsonl`` rows of one epoch's record from ``jvae.fit``: one per seed."""
  rows = []
  for i in range(num_seeds):
    row = {"epoch": record["epoch"], "seed_index": i, "seconds": record["seconds"],
           "steps_per_s": record["steps_per_s"]}
    for key, value in record.items():
      if isinstance(value, np.ndarray) and value.shape == (num_seeds,):
        row[key] = value[i].item()
    rows.append(row)
  return rows


def append_metrics(path: pathlib.Path, rows: list[dict]) -> None:
  """Appends one strict-JSON line per row in one write, flushed to disk."""
  with path.open("a") as f:
    f.write("".join(files.dumps(row) + "\n" for row in rows))
    f.flush()
    os.fsync(f.fileno())


def interrupted_message(run_dir: pathlib.Path, claim: Claim | None) -> str:
  """One line on where an interrupted run's work is and how to continue it.

  A new run (``claim``) interrupted before its first checkpoint is removed.
  """
  step = checkpoint.latest_step(run_dir / CHECKPOINTS)
  resume = f"jvae train --resume {shlex.quote(str(run_dir))}"
  if step is not None:
    return (f"jvae: interrupted; the last complete checkpoint is epoch {step}, "
            f"{run_dir / CHECKPOINTS / f'ckpt_{step:08d}'}; continue with: {resume}")
  if claim is not None and claim.release():
    return f"jvae: interrupted before the first checkpoint; removed {run_dir}"
  return (f"jvae: interrupted before the first checkpoint of {run_dir}; start it again with: "
          f"{resume}")


@contextlib.contextmanager
def sigint_deferred():
  """Holds back SIGINT while the body runs, then raises KeyboardInterrupt if one came.

  Wraps the writing of an epoch's metrics and checkpoint, so that Ctrl-C ends a run between
  epochs' records, never in the middle of one. Only the main thread can handle signals.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  caught = []
  previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
  if previous is None:  # a handler installed outside Python
    previous = signal.default_int_handler
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
  if caught:
    raise KeyboardInterrupt
