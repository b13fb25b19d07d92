"""The benchmark suite: ``python -m benchmarks --suite quick|full``.

Runs each benchmark script in its own process (a fresh JAX runtime each), collects their JSON
records in ``benchmarks/results/<name>[-<tag>].json`` (machine, device, versions, date inside),
and regenerates ``BENCHMARKS.md`` from every record found there. ``quick`` is sized for a 2-core
CPU (about 12 minutes); ``full`` is for an accelerator (and, slowly, for a CPU).

    python -m benchmarks --suite quick
    python -m benchmarks --suite full --tag h100
    python -m benchmarks --render-only          # rebuild BENCHMARKS.md from results/*.json
"""

from __future__ import annotations

import argparse
import pathlib
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
PLOTS = {"seeds", "snr", "discrete"}


def run_suite(suite: str, tag: str | None, only: list[str] | None) -> list[str]:
  RESULTS.mkdir(parents=True, exist_ok=True)
  failed = []
  for name, extra in SUITES[suite].items():
    if only and name not in only:
      continue
    stem = name if not tag else f"{name}-{tag}"
    cmd = [sys.executable, "-m", f"benchmarks.{name}", *extra, "--out",
           str(RESULTS / f"{stem}.json")]
    if name in PLOTS:
      cmd += ["--plot", str(RESULTS / f"{stem}.png")]
    print(f"== {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
      failed.append(name)
    print(f"== {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
  return failed


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description="Run the jvae benchmark suite and rebuild BENCHMARKS.md")
  p.add_argument("--suite", choices=sorted(SUITES), default="quick")
  p.add_argument("--tag", default=None, help="suffix for result files, e.g. the machine (h100)")
  p.add_argument("--only", nargs="+", default=None, help="run only these benchmarks")
  p.add_argument("--render-only", action="store_true")
  args = p.parse_args(argv)
  failed = [] if args.render_only else run_suite(args.suite, args.tag, args.only)
  path = _report.render(RESULTS, ROOT / "BENCHMARKS.md")
  print(f"wrote {path}", file=sys.stderr)
  if failed:
    print(f"failed: {', '.join(failed)}", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
