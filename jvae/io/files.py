"""Small file helpers shared by the command line and the benchmarks (layer 6).

Every JSON document jvae writes is strict JSON (RFC 8259): a non-finite float (NaN, ±Infinity,
e.g. the validation bound of a run that never validated) is written as ``null``.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
import sys
import tempfile


def now_stamp() -> str:
  return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def absolute(path) -> pathlib.Path:
  """``path`` with ``~`` expanded, made absolute against the working directory, normalised.

  Symbolic links are kept, so the path printed back to a user is the one they gave.
  """
  return pathlib.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def finite_or_none(obj):
  """``obj`` with every non-finite float (also NumPy scalars) replaced by None, recursively."""
  if isinstance(obj, dict):
    return {k: finite_or_none(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [finite_or_none(v) for v in obj]
  if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
    return obj
  if hasattr(obj, "item") and getattr(obj, "shape", None) == ():
    obj = obj.item()  # a NumPy or JAX scalar
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  return obj


def dumps(obj, **kwargs) -> str:
  """Strict JSON text of ``obj``: non-finite floats become ``null`` (see :func:`finite_or_none`)."""
  return json.dumps(finite_or_none(obj), allow_nan=False, **kwargs)


def _synced_temp(path: pathlib.Path, text: str) -> str:
  """``text`` in a uniquely named temporary file beside ``path``, flushed to disk; its name."""
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise
  return tmp


def write_json(path, obj) -> None:
  """Writes ``obj`` as strict JSON to ``path`` atomically: a reader sees the old file or the new.

  The text goes to a uniquely named temporary file in the same folder, is flushed to disk, and is
  renamed over ``path``; an interrupted write leaves at most a stray ``.<name>.*.tmp`` file.
  """
  path = pathlib.Path(path)
  tmp = _synced_temp(path, dumps(obj, indent=2, sort_keys=True) + "\n")
  try:
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def create_json(path, obj) -> None:
  """Like :func:`write_json`, but fails with FileExistsError if ``path`` exists (atomically).

  The complete file is linked to its final name, which the file system refuses when the name is
  taken, so two processes can never both create ``path``, and nobody sees it half-written.
  """
  path = pathlib.Path(path)
  text = dumps(obj, indent=2, sort_keys=True) + "\n"
  tmp = _synced_temp(path, text)
  try:
    try:
      os.link(tmp, path)
    except FileExistsError:
      raise
    except OSError:  # a file system without hard links: exclusive creation, then the text
      with open(path, "x") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
  finally:
    pathlib.Path(tmp).unlink(missing_ok=True)


def eprint(*args) -> None:
  print(*args, file=sys.stderr, flush=True)
