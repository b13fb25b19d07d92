"""Crash-safe checkpoints of arbitrary JAX pytrees, written with orbax.

Layout: ``directory/ckpt_{step:08d}/`` holds an orbax checkpoint plus ``MANIFEST.json``. Orbax
writes into a temporary directory and renames it when finished, so a killed write never takes the
final name. The manifest (sha256 and size of every file, the step and user metadata) is written
last, atomically, and is the commit marker: a checkpoint without it is incomplete.
``restore_latest`` verifies every file against the manifest and falls back to older checkpoints,
with a warning, when the newest is incomplete, truncated or corrupted.

Typed PRNG key arrays (``jax.random.key``) are stored as their raw ``key_data`` and rewrapped with
the key implementation of the matching leaf of the restore target. Nothing is pickled.

Example:
  >>> save(ckpt_dir, step, state, metadata={"epoch": 3}, keep=3)
  >>> found = restore_latest(ckpt_dir, target=fresh_state)
  >>> if found is not None:
  ...   step, state, metadata = found
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import shutil
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

MANIFEST = "MANIFEST.json"
_FORMAT = 1
_CKPT = re.compile(r"ckpt_(\d+)")
# Orbax's in-progress directories are named ``<final name>.orbax-checkpoint-tmp-<timestamp>``.
_CKPT_OR_TMP = re.compile(r"ckpt_(\d+)(?:\.orbax-checkpoint-tmp-.*)?")
_CHUNK = 1 << 20


class CheckpointWarning(UserWarning):
  """A checkpoint was skipped because it is incomplete, truncated or corrupted."""


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
    metadata: JSON-serialisable dict stored in the manifest and returned by ``restore_latest``.
    keep: how many complete checkpoints to keep, at least 1.

  Returns:
    The path of the new checkpoint folder.
  """
  if step < 0:
    raise ValueError(f"step must be non-negative, got {step}")
  if keep < 1:
    raise ValueError(f"keep must be at least 1, got {keep}")
  metadata = {} if metadata is None else metadata
  json.dumps(metadata)  # Fail before writing anything if metadata is not JSON.
  directory = pathlib.Path(directory).absolute()
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / f"ckpt_{step:08d}"
  if path.exists():
    shutil.rmtree(path)
  with _checkpointer() as checkpointer:
    checkpointer.save(path, args=ocp.args.StandardSave(_keys_to_data(tree)))
  _write_manifest(path, step, metadata)
  _prune(directory, keep)
  return path


def restore_latest(directory, target) -> tuple[int, Any, dict] | None:
  """Restores the newest checkpoint that is complete and intact.

  Checkpoints that have no manifest, whose files do not match the manifest's sizes and hashes, or
  that orbax fails to restore into ``target`` are skipped with a ``CheckpointWarning``.

  Args:
    directory: folder given to ``save``.
    target: pytree with the saved structure (e.g. a freshly initialised state). Its leaves set the
      dtypes and shardings of the restored arrays; its typed PRNG key leaves (concrete key arrays)
      set the key implementation.

  Returns:
    ``(step, tree, metadata)``, or None when there is no usable checkpoint.
  """
  for step, path in sorted(_step_dirs(directory).items(), reverse=True):
    try:
      manifest = _verify(path, step)
      with _checkpointer() as checkpointer:
        restored = checkpointer.restore(
            path, args=ocp.args.StandardRestore(_keys_to_data(target)))
      return step, _data_to_keys(restored, target), manifest["metadata"]
    except _Invalid as e:
      problem = str(e)
    except Exception as e:
      problem = f"restore failed: {type(e).__name__}: {e}"
    warnings.warn(f"Skipping checkpoint {path}: {problem}", CheckpointWarning, stacklevel=2)
  return None


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
  directory = pathlib.Path(directory)
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
    json.dump(manifest, f, indent=1, sort_keys=True)
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
