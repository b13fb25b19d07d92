"""Wall time of README's main job, ``jvae train`` with its defaults (digits, 100 epochs).

Runs the installed command in a fresh temporary directory ``--rounds`` times, each a new process
(import, compilation, training, the final test bounds and the pictures all included), and records
every round's seconds and their median.

    python -m benchmarks.headline --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks._harness import emit, log, record


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--quick", action="store_true", help="one round")
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  rounds = 1 if args.quick else args.rounds
  seconds = []
  for i in range(rounds):
    with tempfile.TemporaryDirectory() as tmp:
      start = time.perf_counter()
      subprocess.run([sys.executable, "-m", "jvae", "train", "--no-progress", "--out",
                      f"{tmp}/run"], check=True, cwd=tmp, stdout=subprocess.DEVNULL)
      seconds.append(time.perf_counter() - start)
    log(f"round {i + 1}: {seconds[-1]:.1f} s")
  emit(record("headline", {"command": "jvae train --no-progress", "seconds": seconds,
                           "median_seconds": statistics.median(seconds)}), args.out)


if __name__ == "__main__":
  main()
