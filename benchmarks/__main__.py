"""The benchmark suite: ``python -m benchmarks --suite quick|full|device``.

Runs each benchmark script in its own process (a fresh JAX runtime each), collects their JSON
records in ``benchmarks/results/<name>[-<tag>].json`` (machine, device, versions, date inside),
and regenerates ``BENCHMARKS.md`` from every record found there. ``quick`` is sized for a 2-core
CPU (about 12 minutes); ``full`` is for an accelerator (and, slowly, for a CPU); ``device`` is
the accelerator goals of issue 15 (evaluation, seeds, peers, throughput, precision, the main
job) sized for one lent GPU machine's minutes, each script with a cap on its wall time
(``CAPS``), the most important first (``benchmarks/device.sh`` runs it there).

``--budget S`` bounds the whole run: a script gets at most what is left of S seconds (and at
most its cap), is stopped when that runs out (recorded as failed, its record not written), and
none starts once less than ``MIN_START_S`` is left.

    python -m benchmarks --suite quick
    python -m benchmarks --suite full --tag h100
    python -m benchmarks --suite device --tag h100 --budget 360
    python -m benchmarks --render-only          # rebuild BENCHMARKS.md from results/*.json
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import subprocess
import sys
import time

from benchmarks import _report

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

SUITES = {
    "quick": {
        "headline": ["--quick"],
        "throughput": ["--quick"],
        "peers": ["--quick", "--rounds", "9"],  # medians of 9 alternating rounds: steadier
        "evaluation": ["--quick"],
        "seeds": ["--quick"],
        "precision": ["--quick"],
        "snr": ["--quick"],
        "discrete": ["--quick"],
        "m2": ["--quick"],
        "gap": ["--quick"],
        "ais": ["--quick"],
    },
    "full": {
        "headline": [],
        "throughput": [],
        "peers": [],
        "evaluation": [],
        "seeds": [],
        "precision": [],
        "snr": [],
        "discrete": [],
        "m2": [],
        "gap": [],
        "ais": [],
        "nll": ["--epochs", "10", "--experiments", "vae1", "iwae5", "iwae50", "iwae50dreg",
                "vae1iaf", "vae1_2l", "iwae5_2l", "iwae50_2l", "lvae1"],
    },
}
# The accelerator goals, the most important first; on an H100-class GPU each script should take
# well under its cap (compiles of a few seconds, epochs of milliseconds).
SUITES["device"] = {
    "evaluation": [],  # K = 5000 on all 10,000 test images, PyTorch on CUDA beside it
    "seeds": ["--repeats", "3"],  # N = 1, 4, 16, 64: the 64-seed ratio
    "peers": [],  # full 500-step epochs, 3 rounds; PyTorch on CUDA
    "throughput": [],
    "precision": [],  # float32 against bf16 matmuls: speed and the effect on the bound
    "headline": ["--quick"],  # README's main job, once
}
CAPS = {"device": {"evaluation": 120, "seeds": 120, "peers": 120, "throughput": 60,
                   "precision": 90, "headline": 90}}
MIN_START_S = 20.0
PLOTS = {"seeds", "snr", "discrete"}


def run_suite(suite: str, tag: str | None, only: list[str] | None,
              budget: float | None = None) -> list[str]:
  """Run ``suite``'s scripts (those in ``only``, if given) in order; the names that failed, were
  stopped at their time limit or were not started for lack of ``budget`` seconds."""
  RESULTS.mkdir(parents=True, exist_ok=True)
  failed = []
  deadline = None if budget is None else time.monotonic() + budget
  for name, extra in SUITES[suite].items():
    if only and name not in only:
      continue
    cap = CAPS.get(suite, {}).get(name)
    limits = [] if cap is None else [cap]
    if deadline is not None:
      left = deadline - time.monotonic()
      if left < MIN_START_S:
        print(f"== {name}: not started, {left:.0f} s of the budget left", file=sys.stderr,
              flush=True)
        failed.append(name)
        continue
      limits.append(left)
    limit = min(limits) if limits else None
    stem = name if not tag else f"{name}-{tag}"
    cmd = [sys.executable, "-m", f"benchmarks.{name}", *extra, "--out",
           str(RESULTS / f"{stem}.json")]
    if name in PLOTS:
      cmd += ["--plot", str(RESULTS / f"{stem}.png")]
    print(f"== {name}: {' '.join(cmd[1:])}" + (f" (at most {limit:.0f} s)" if limit else ""),
          file=sys.stderr, flush=True)
    start = time.perf_counter()
    code = _run(cmd, limit)
    if code is None:
      print(f"== {name}: stopped at its limit of {limit:.0f} s", file=sys.stderr, flush=True)
    if code != 0:
      failed.append(name)
    print(f"== {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
  return failed


def _run(cmd: list[str], limit: float | None) -> int | None:
  """``cmd``'s exit code; None when it outran ``limit`` seconds and was killed, together with
  the processes it started (its own process group: e.g. the main job that ``headline`` runs)."""
  proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
  try:
    return proc.wait(timeout=limit)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return None
  except BaseException:  # e.g. Ctrl-C: take the script down too
    os.killpg(proc.pid, signal.SIGKILL)
    raise


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description="Run the jvae benchmark suite and rebuild BENCHMARKS.md")
  p.add_argument("--suite", choices=sorted(SUITES), default="quick")
  p.add_argument("--tag", default=None, help="suffix for result files, e.g. the machine (h100)")
  p.add_argument("--only", nargs="+", default=None, help="run only these benchmarks")
  p.add_argument("--budget", type=float, default=None,
                 help="seconds for the whole run: each script gets at most what is left")
  p.add_argument("--render-only", action="store_true")
  p.add_argument("--no-render", action="store_true",
                 help="leave BENCHMARKS.md as it is (e.g. on a lent machine whose records are "
                      "brought back and rendered here)")
  args = p.parse_args(argv)
  if args.only:
    unknown = sorted(set(args.only) - set(SUITES[args.suite]))
    if unknown:
      p.error(f"--only {' '.join(unknown)}: not in the {args.suite} suite "
              f"({', '.join(SUITES[args.suite])})")
  if args.render_only and args.no_render:
    p.error("--render-only and --no-render exclude each other")
  if args.budget is not None and not args.budget > 0:
    p.error(f"--budget must be > 0 seconds, got {args.budget}")
  failed = [] if args.render_only else run_suite(args.suite, args.tag, args.only, args.budget)
  if not args.no_render:
    path = _report.render(RESULTS, ROOT / "BENCHMARKS.md")
    print(f"wrote {path}", file=sys.stderr)
  if failed:
    print(f"failed: {', '.join(failed)}", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
