"""Crash-safe checkpoints of arbitrary JAX pytrees, written with orbax.

Layout: ``directory/ckpt_{step:08d}/`` holds an orbax checkpoint plus ``MANIFEST.json``. Orbax
writes into a temporary directory and renames it when finished, so a killed write never takes the
final name. The manifest (sha256 and size of every file, the step and user metadata) is written
last, atomically, and is the commit marker: a checkpoint without it is incomplete.
``restore_latest`` verifies every file against the manifest and falls back to older checkpoints,
with a warning, when the newest is incomplete, truncated or corrupted; it raises an error, never
returns "nothing", when complete checkpoints exist but none restores, or when one holds another
tree than the restore target. Directories may be given relative to the working directory.

Typed PRNG key arrays (``jax.random.key``) are stored as their raw ``key_data`` and rewrapped with
the key implementation of the matching leaf of the restore target. Nothing is pickled.

Example:
  >>> save(ckpt_dir, step, state, metadata={"epoch": 3}, keep=3)
  >>> found = restore_latest(ckpt_dir, target=fresh_state)
  >>> if found is not None:
  ...   step, state, metadata = found
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import sys
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging as absl_logging

MANIFEST = "MANIFEST.json"
_FORMAT = 1
_CKPT = re.compile(r"ckpt_(\d+)")
# Orbax's in-progress directories are named ``<final name>.orbax-checkpoint-tmp-<timestamp>``.
_CKPT_OR_TMP = re.compile(r"ckpt_(\d+)(?:\.orbax-checkpoint-tmp-.*)?")
_CHUNK = 1 << 20


class CheckpointWarning(UserWarning):
  """A checkpoint was skipped because it is incomplete, truncated or corrupted."""


class CheckpointError(ValueError):
  """Complete checkpoints exist, but none of them can be restored."""


class CheckpointMismatchError(CheckpointError):
  """An intact checkpoint holds a different tree (leaves, shapes, dtypes) than the target."""


class _Invalid(ValueError):
  """A checkpoint folder does not match its manifest, or has none."""


def save(directory, step: int, tree, *, metadata: dict | None = None,
         keep: int = 3) -> pathlib.Path:
  """Writes ``tree`` to ``directory/ckpt_{step:08d}`` and prunes old checkpoints.

  Returns only once the checkpoint is complete on disk. An existing checkpoint of the same step is
  replaced. After saving, complete checkpoints beyond the newest ``keep`` are deleted, together
  with incomplete and temporary leftovers older than the oldest kept one.

  Args:
    directory: folder holding the checkpoints; created if missing.
    step: non-negative training step, used in the folder name.
    tree: pytree of arrays, scalars and typed PRNG key arrays.
    metadata: JSON-serialisable dict (finite numbers only) stored in the manifest and returned
      by ``restore_latest``.
    keep: how many complete checkpoints to keep, at least 1.

  Returns:
    The path of the new checkpoint folder.
  """
  if step < 0:
    raise ValueError(f"step must be non-negative, got {step}")
  if keep < 1:
    raise ValueError(f"keep must be at least 1, got {keep}")
  metadata = {} if metadata is None else metadata
  json.dumps(metadata, allow_nan=False)  # Fail before writing anything unless it is JSON.
  directory = _absolute(directory)
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / f"ckpt_{step:08d}"
  if path.exists():
    shutil.rmtree(path)
  with _quiet(collect=False), _checkpointer() as checkpointer:
    checkpointer.save(path, args=ocp.args.StandardSave(_keys_to_data(tree)))
  _write_manifest(path, step, metadata)
  _prune(directory, keep)
  return path


def restore_latest(directory, target) -> tuple[int, Any, dict] | None:
  """Restores the newest checkpoint that is complete and intact.

  Checkpoints that have no manifest, whose files do not match the manifest's sizes and hashes, or
  that orbax fails to read are skipped with a ``CheckpointWarning``, and the next older one is
  tried. A checkpoint whose saved tree does not fit ``target`` (other leaves, shapes or dtypes:
  ``target`` describes a different model) is not skipped: that is an error of the caller, and
  raises :class:`CheckpointMismatchError` at once. Orbax's own logging and warnings are silenced
  while it works, so a failure is reported once, by this function.

  Args:
    directory: folder given to ``save`` (relative to the working directory, or absolute).
    target: pytree with the saved structure (e.g. a freshly initialised state). Its leaves set the
      dtypes and shardings of the restored arrays; its typed PRNG key leaves (concrete key arrays)
      set the key implementation.

  Returns:
    ``(step, tree, metadata)``, or None when ``directory`` holds no complete checkpoint (none with
    a manifest) at all.

  Raises:
    CheckpointMismatchError: the newest intact checkpoint does not fit ``target``.
    CheckpointError: there are complete checkpoints, but none could be restored.
  """
  directory = _absolute(directory)
  problems = []
  for step, path in sorted(_step_dirs(directory).items(), reverse=True):
    try:
      manifest = _verify(path, step)
    except _Invalid as e:
      problem = str(e)
    else:
      try:
        restored = _restore(path, target)
      except CheckpointMismatchError:
        raise
      except Exception as e:
        problem = f"restore failed: {type(e).__name__}: {_first_line(e)}"
      else:
        _warn_skipped(problems)
        return step, restored, manifest["metadata"]
    problems.append((path, problem))
  if not all_steps(directory):
    _warn_skipped(problems)
    return None
  detail = "; ".join(f"{p.name}: {why}" for p, why in problems)
  raise CheckpointError(f"no checkpoint in {directory} can be restored ({detail})")


def _warn_skipped(problems) -> None:
  for path, why in problems:
    warnings.warn(f"Skipping checkpoint {path}: {why}", CheckpointWarning, stacklevel=3)


def _first_line(err: BaseException, limit: int = 300) -> str:
  text = str(err).strip().splitlines()
  text = text[0] if text else ""
  return text if len(text) <= limit else text[:limit] + " …"


def _restore(path: pathlib.Path, target):
  """Restores the checkpoint folder ``path`` into ``target``; see ``restore_latest``."""
  data_target = _keys_to_data(target)
  with _quiet(), _checkpointer() as checkpointer:
    saved = checkpointer.metadata(path)
    if hasattr(saved, "item_metadata"):  # orbax >= 0.11: StepMetadata(item_metadata=TreeMetadata)
      saved = getattr(saved.item_metadata, "tree", None)
    if not jax.tree_util.tree_leaves(saved) and jax.tree_util.tree_leaves(data_target):
      raise ValueError("its tree metadata is unreadable or empty")
    mismatches = _mismatches(saved, data_target)
    if mismatches:
      shown = "; ".join(mismatches[:4])
      more = f"; and {len(mismatches) - 4} more" if len(mismatches) > 4 else ""
      raise CheckpointMismatchError(
          f"checkpoint {path} does not fit the restore target: {shown}{more}")
    restored = checkpointer.restore(path, args=ocp.args.StandardRestore(data_target))
  return _data_to_keys(restored, target)


def _leaf_name(path) -> str:
  parts = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
    else:
      parts.append(str(entry))
  return ".".join(parts)


def _mismatches(saved, target) -> list[str]:
  """What differs between the saved tree's metadata and ``target``: leaves, shapes, dtypes."""
  flat_saved = {_leaf_name(p): m for p, m in jax.tree_util.tree_flatten_with_path(saved)[0]}
  flat_target = {_leaf_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(target)[0]}
  out = [f"{name}: not in the checkpoint" for name in sorted(flat_target.keys() - flat_saved)]
  out += [f"{name}: saved, but not in the target" for name in sorted(flat_saved.keys()
                                                                      - flat_target)]
  for name in sorted(flat_saved.keys() & flat_target.keys()):
    meta, leaf = flat_saved[name], flat_target[name]
    saved_shape, shape = getattr(meta, "shape", None), getattr(leaf, "shape", None)
    if saved_shape is not None and shape is not None and tuple(saved_shape) != tuple(shape):
      out.append(f"{name}: saved shape {tuple(saved_shape)}, target {tuple(shape)}")
      continue
    saved_dtype, dtype = getattr(meta, "dtype", None), getattr(leaf, "dtype", None)
    if saved_dtype is not None and dtype is not None and jnp.dtype(saved_dtype) != dtype:
      out.append(f"{name}: saved dtype {jnp.dtype(saved_dtype)}, target {jnp.dtype(dtype)}")
  return out


@contextlib.contextmanager
def _quiet(collect: bool = True):
  """Silences orbax, absl and asyncio while orbax reads or writes.

  After a failed read orbax leaves futures behind that report themselves through Python warnings,
  the ``asyncio`` logger and ``sys.unraisablehook`` (one "Event loop is closed" traceback each,
  often thousands); with ``collect`` they are collected before the hooks are put back.
  """
  loggers = [logging.getLogger(name) for name in ("absl", "orbax", "asyncio", "tensorstore")]
  levels = [lg.level for lg in loggers]
  hook = sys.unraisablehook
  absl_verbosity = absl_logging.get_verbosity()
  try:
    for lg in loggers:
      lg.setLevel(logging.CRITICAL)
    absl_logging.set_verbosity(absl_logging.FATAL)
    sys.unraisablehook = lambda unraisable: None
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      try:
        yield
      finally:
        if collect:
          gc.collect()
  finally:
    sys.unraisablehook = hook
    absl_logging.set_verbosity(absl_verbosity)
    for lg, level in zip(loggers, levels, strict=True):
      lg.setLevel(level)


def _absolute(directory) -> pathlib.Path:
  """``directory`` as an absolute path (orbax refuses relative ones); ``~`` is expanded."""
  return pathlib.Path(os.path.abspath(os.path.expanduser(os.fspath(directory))))


def all_steps(directory) -> list[int]:
  """Steps of the complete checkpoints (those with a manifest) in ``directory``, ascending."""
  return sorted(step for step, path in _step_dirs(directory).items()
                if (path / MANIFEST).is_file())


def latest_step(directory) -> int | None:
  """The newest complete checkpoint's step, or None. Its files are not verified."""
  steps = all_steps(directory)
  return steps[-1] if steps else None


def _checkpointer() -> ocp.Checkpointer:
  """A synchronous orbax checkpointer that writes to a temporary folder and renames it."""
  return ocp.Checkpointer(
      ocp.StandardCheckpointHandler(),
      temporary_path_class=ocp.path.atomicity.AtomicRenameTemporaryPath)


def _is_key(x) -> bool:
  return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree):
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _data_to_keys(tree, target):
  def rewrap(x, t):
    return jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)) if _is_key(t) else x
  return jax.tree.map(rewrap, tree, target)


def _step_dirs(directory) -> dict[int, pathlib.Path]:
  """Final-named checkpoint folders (complete or not) by step."""
  directory = _absolute(directory)
  if not directory.is_dir():
    return {}
  return {int(m.group(1)): p for p in directory.iterdir()
          if p.is_dir() and (m := _CKPT.fullmatch(p.name))}


def _sha256(file: pathlib.Path, sync: bool = False) -> str:
  """Hex sha256 of ``file``; with ``sync``, first flushes it to disk."""
  digest = hashlib.sha256()
  with open(file, "rb") as f:
    if sync:
      os.fsync(f.fileno())
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def _data_files(path: pathlib.Path) -> list[pathlib.Path]:
  return sorted(f for f in path.rglob("*") if f.is_file() and f.name != MANIFEST)


def _write_manifest(path: pathlib.Path, step: int, metadata: dict) -> None:
  # Syncing each file before hashing it means the manifest can never outlive the data on disk.
  files = {f.relative_to(path).as_posix(): {"size": f.stat().st_size, "sha256": _sha256(f, True)}
           for f in _data_files(path)}
  manifest = {"format": _FORMAT, "step": step, "metadata": metadata, "files": files}
  tmp = path / f".{MANIFEST}.tmp"
  with open(tmp, "w") as f:
    json.dump(manifest, f, indent=1, sort_keys=True, allow_nan=False)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path / MANIFEST)
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _verify(path: pathlib.Path, step: int) -> dict:
  """Returns the manifest of ``path``; raises _Invalid if it is missing or a file mismatches."""
  manifest_path = path / MANIFEST
  if not manifest_path.is_file():
    raise _Invalid(f"no {MANIFEST} (incomplete, e.g. interrupted while writing)")
  try:
    manifest = json.loads(manifest_path.read_text())
    files, saved_step, metadata = manifest["files"], manifest["step"], manifest["metadata"]
  except (ValueError, KeyError, TypeError) as e:
    raise _Invalid(f"unreadable {MANIFEST}: {e!r}") from e
  if saved_step != step or not isinstance(files, dict) or not isinstance(metadata, dict):
    raise _Invalid(f"{MANIFEST} does not describe step {step}")
  for name, expected in files.items():
    file = path / name
    if not file.is_file():
      raise _Invalid(f"missing file {name}")
    size = file.stat().st_size
    if size != expected["size"]:
      raise _Invalid(f"file {name} has {size} bytes, expected {expected['size']} (truncated?)")
    if _sha256(file) != expected["sha256"]:
      raise _Invalid(f"file {name} fails its sha256 check (corrupted)")
  return manifest


def _prune(directory: pathlib.Path, keep: int) -> None:
  kept = all_steps(directory)[-keep:]
  for p in directory.iterdir():
    m = _CKPT_OR_TMP.fullmatch(p.name)
    if m and p.is_dir() and int(m.group(1)) < kept[0]:
      shutil.rmtree(p, ignore_errors=True)
