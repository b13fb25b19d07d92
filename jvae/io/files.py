"""Small file helpers shared by the command line and the benchmarks (layer 6)."""

from __future__ import annotations

import datetime
import json
import pathlib
import sys


def now_stamp() -> str:
  return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def write_json(path: pathlib.Path, obj) -> None:
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
  tmp.replace(path)


def eprint(*args) -> None:
  print(*args, file=sys.stderr, flush=True)
