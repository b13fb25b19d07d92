"""Published log-likelihood tables, reproduced with one command: ``python -m benchmarks.paper``.

    python -m benchmarks.paper --table burda2015                          # every row, 3,280 passes
    python -m benchmarks.paper --table burda2015 --rows iwae-k50-1l-static --budget short

``--table burda2015`` is Burda, Grosse & Salakhutdinov (2015), *Importance Weighted
Autoencoders*, with the paper's protocol exactly:

* models: one stochastic layer 784-200-200-50 (``jvae.burda2015``) and two, 784-(200,200)-100-
  (100,100)-50 (``jvae.burda2015_2layer``), tanh, Bernoulli p(x|z), N(0, I) prior;
* objectives: VAE (the ELBO averaged over k samples) and IWAE with k = 1, 5, 50 (k = 1 is the
  same objective for both, so the table has the VAE k = 1 row once);
* Adam with β1 0.9, β2 0.999, ε 1e-4, batch 20, learning rate 1e-3 · 10^(−i/7) for 3^i epochs,
  i = 0 … 7 (3,280 passes; ``jvae train --lr-stages 1 3 … 2187 --adam-eps 1e-4``); the params
  kept are those with the best validation ELBO, checked after every epoch;
* test log-likelihood: ``jvae eval -k 5000`` (``jvae.log_marginal``, K = 5000) on the whole test
  set, with the standard error of the test-set mean over images (std / √N, the error that
  decides whether two rows differ) and the Monte-Carlo error of the K-sample estimates;
* active units (``jvae.active_units``): Cov_x(E_q[u]) > 0.01 over the test set, per layer.

Data: ``static`` is the statically binarized MNIST of Larochelle & Murray (50,000 / 10,000 /
10,000; the shipped data); ``dynamic`` trains on a fresh Bernoulli draw of the MNIST grey levels
at every batch and tests on one fixed draw, and runs only where the canonical MNIST files are in
the cache (``jvae.data.load("mnist-dynamic", download=False)``); without them its rows are
reported as skipped, not run.

Budgets (``--budget``): ``full`` is the paper's 3,280 passes; ``third`` (1,094) and ``short``
(366) divide every stage by 3 or 9 (rounded up to whole epochs), keeping the eight learning rates
in order; ``smoke`` (8 passes) is for checking the machinery. Every row says its budget and
passes, and a table row trained for less than the paper's passes is marked as such.

Resuming: each row trains in its own ``jvae train`` run directory under ``--runs`` (default
``runs/paper/<table>-<budget>``), with a checkpoint after every epoch. Run the same command again
after an interruption and every row continues from its last checkpoint; finished rows are not
redone. ``jvae train`` shows each row's progress with an ETA; the suite prints the rows left.
The record ``benchmarks/results/paper-<table>-<budget>.json`` holds the machine, the commit of
each row's code, the wall time of its training (summed over resumes) and evaluation, and the
published number beside each row; ``python -m benchmarks --render-only`` puts it in
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pathlib
import sys
import time

from benchmarks._harness import log, machine_info

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

BUDGETS = {"full": 1, "third": 3, "short": 9, "smoke": 2187}
PAPER_PASSES = 3280

# Burda et al. (2015). Dynamic binarization: Table 1 (MNIST, NLL in nats). Static binarization
# (Larochelle & Murray's split): the appendix's IWAE one-layer figures, k = 1 / 5 / 50.
PUBLISHED = {
    ("vae", 1, 1, "dynamic"): 86.76, ("vae", 5, 1, "dynamic"): 86.47,
    ("vae", 50, 1, "dynamic"): 86.35, ("iwae", 5, 1, "dynamic"): 85.54,
    ("iwae", 50, 1, "dynamic"): 84.78,
    ("vae", 1, 2, "dynamic"): 85.33, ("vae", 5, 2, "dynamic"): 85.01,
    ("vae", 50, 2, "dynamic"): 84.78, ("iwae", 5, 2, "dynamic"): 83.89,
    ("iwae", 50, 2, "dynamic"): 82.90,
    ("vae", 1, 1, "static"): 88.71, ("iwae", 5, 1, "static"): 87.63,
    ("iwae", 50, 1, "static"): 87.10,
}
PUBLISHED_SOURCE = {"dynamic": "Burda et al. 2015, Table 1",
                    "static": "Burda et al. 2015, appendix (static binarization)"}


def burda2015_rows() -> dict[str, dict]:
  """The rows of the table by name, ``<objective>-k<k>-<layers>l-<binarization>``."""
  rows = {}
  for data in ("static", "dynamic"):
    for layers in (1, 2):
      for objective, k in (("vae", 1), ("vae", 5), ("vae", 50), ("iwae", 5), ("iwae", 50)):
        rows[f"{objective}-k{k}-{layers}l-{data}"] = dict(
            objective=objective, k=k, layers=layers, binarization=data,
            published=PUBLISHED.get((objective, k, layers, data)))
  return rows


TABLES = {"burda2015": burda2015_rows}


def train_command(row: dict, *, stages, data: str | None, seed: int, run_dir: pathlib.Path):
  """The ``jvae train`` arguments of a row (a new run in ``run_dir``)."""
  dataset = data or ("binarized_mnist" if row["binarization"] == "static" else "mnist-dynamic")
  model = "burda2015" if row["layers"] == 1 else "burda2015_2layer"
  bound = "elbo" if row["objective"] == "vae" else "iwae"
  cmd = ["train", "--data", dataset, "--model", model, "--bound", bound,
         "--num-samples", str(row["k"]), "--batch-size", "20", "--optimizer", "adam",
         "--lr", "1e-3", "--adam-eps", "1e-4", "--lr-stages", *map(str, stages),
         "--eval-samples", "100", "--seed", str(seed), "--out", str(run_dir)]
  if bound == "elbo" and row["layers"] == 1:
    cmd += ["--kl", "analytic"]
  return cmd


def _jvae(args: list[str], *, capture: bool = False) -> str:
  """Runs ``jvae ARGS`` in this process; its standard output when ``capture``.

  Raises:
    SystemExit: with the command's exit status when it is not 0 (130 after an interrupt, 1 for
      a run directory or data it cannot use, 2 for a usage error).
  """
  from jvae.cli.main import main as jvae_main

  log("$ jvae " + " ".join(args))
  out = io.StringIO()
  with contextlib.redirect_stdout(out) if capture else contextlib.nullcontext():
    status = jvae_main(list(args))
  if status:
    raise SystemExit(status)
  return out.getvalue()


def _read(path: pathlib.Path, default=None):
  return json.loads(path.read_text()) if path.is_file() else default


def _write(path: pathlib.Path, obj) -> None:
  from jvae.io import files

  files.write_json(path, obj)


def dynamic_available() -> str | None:
  """None when dynamically binarized MNIST can be loaded from the cache, else why not."""
  import jvae

  try:
    jvae.data.load("mnist-dynamic", download=False)
  except (FileNotFoundError, ValueError) as err:
    return str(err).splitlines()[0]
  return None


def train_row(name: str, row: dict, out: pathlib.Path, args, stages) -> float:
  """Trains (or resumes) one row; returns the wall seconds of this call."""
  run_dir = out / name / "train"
  start = time.perf_counter()
  if (run_dir / "summary.json").is_file():
    return 0.0
  if (run_dir / "config.json").is_file():
    _jvae(["train", "--resume", str(run_dir)] + (["--no-progress"] if args.no_progress else []))
  else:
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    _jvae(train_command(row, stages=stages, data=args.data, seed=args.seed, run_dir=run_dir)
          + (["--no-progress"] if args.no_progress else []))
  return time.perf_counter() - start


def evaluate_row(name: str, out: pathlib.Path, args) -> dict:
  """``jvae eval -k K`` of a trained row, kept in ``<row>/eval-<K>[-<limit>].json``."""
  stem = f"eval-{args.eval_samples}" + (f"-{args.test_limit}" if args.test_limit else "")
  path = out / name / f"{stem}.json"
  cached = _read(path)
  if cached is not None:
    return cached
  start = time.perf_counter()
  cmd = ["eval", str(out / name / "train"), "--num-samples", str(args.eval_samples),
         "--chunk-size", str(min(args.eval_samples, 500)), "--no-progress"]
  if args.test_limit:
    cmd += ["--limit", str(args.test_limit)]
  result = json.loads(_jvae(cmd, capture=True).strip().splitlines()[-1])
  result["seconds"] = time.perf_counter() - start
  _write(path, result)
  return result


def active_units_row(name: str, out: pathlib.Path, args) -> dict:
  """Active units of a trained row over the test set, kept in ``<row>/active_units.json``."""
  path = out / name / "active_units.json"
  cached = _read(path)
  if cached is not None:
    return cached
  import jax

  import jvae
  from jvae.cli import run as _run

  run, state = _run.load_run(out / name / "train")
  params = jax.tree_util.tree_map(lambda a: a[0], state.best_params)
  x = run.data.test if not args.test_limit else run.data.test[:args.test_limit]
  result = jvae.active_units(run.model, params, jax.random.key(0), x)
  record = {"per_layer": result.active, "total": result.total, "exact_mean": result.exact_mean,
            "threshold": 0.01, "split": "test"}
  _write(path, record)
  return record


def _commit_of(path: pathlib.Path) -> str | None:
  return (_read(path, {}) or {}).get("git_commit")


def run_table(args) -> dict:
  rows = TABLES[args.table]()
  names = args.rows or list(rows)
  unknown = [n for n in names if n not in rows]
  if unknown:
    raise SystemExit(f"unknown rows {unknown}; the {args.table} table has: {', '.join(rows)}")
  import jvae

  stages = jvae.scaled_stages(jvae.BURDA2015_STAGES, BUDGETS[args.budget])
  passes = sum(stages)
  out = pathlib.Path(args.runs or ROOT / "runs" / "paper" / f"{args.table}-{args.budget}")
  out.mkdir(parents=True, exist_ok=True)
  no_dynamic = None
  if args.data is None and any(rows[n]["binarization"] == "dynamic" for n in names):
    no_dynamic = dynamic_available()
  info = machine_info()
  records = []
  for i, name in enumerate(names):
    row = rows[name]
    log(f"== {args.table} row {i + 1}/{len(names)}: {name} ({args.budget} budget, {passes} "
        f"passes)")
    record = {"row": name, **row, "budget": args.budget, "passes": passes,
              "paper_passes": PAPER_PASSES, "stages": list(stages),
              "published_source": PUBLISHED_SOURCE[row["binarization"]]}
    if row["binarization"] == "dynamic" and no_dynamic is not None:
      log(f"   skipped: {no_dynamic}")
      records.append({**record, "skipped": f"dynamically binarized MNIST unavailable: "
                                           f"{no_dynamic}"})
      continue
    wall_path = out / name / "wall.json"
    wall = _read(wall_path, {"train_seconds": 0.0, "sessions": 0})
    commit_path = out / name / "commit.json"
    if not commit_path.is_file():
      (out / name).mkdir(parents=True, exist_ok=True)
      _write(commit_path, {"git_commit": info["git_commit"]})
    seconds = train_row(name, row, out, args, stages)
    if seconds:
      wall = {"train_seconds": wall["train_seconds"] + seconds, "sessions": wall["sessions"] + 1}
      _write(wall_path, wall)
    evaluation = evaluate_row(name, out, args)
    units = active_units_row(name, out, args)
    (seed,) = evaluation["per_seed"]
    summary = _read(out / name / "train" / "summary.json", {})
    record.update(
        test_nll=seed["nll"], stderr_over_images=seed["stderr_over_images"],
        mc_stderr=seed["mc_stderr"], test_images=seed["examples"],
        eval_samples=evaluation["num_samples"], eval_seconds=evaluation.get("seconds"),
        train_seconds=wall["train_seconds"], train_sessions=wall["sessions"],
        best_epoch=(summary.get("best_epoch") or [None])[0],
        epochs_run=summary.get("epochs_run"), nonfinite_steps=summary.get("nonfinite_steps"),
        active_units=units["total"], active_units_per_layer=units["per_layer"],
        git_commit=_commit_of(commit_path), data=args.data or row["binarization"])
    log(f"   test NLL {record['test_nll']:.2f} ± {record['stderr_over_images']:.2f} (images) "
        f"± {record['mc_stderr']:.3f} (MC), {units['total']} active units; published "
        f"{row['published'] or '—'}; train {wall['train_seconds'] / 3600:.2f} h")
    records.append(record)
  return {"benchmark": "paper", "table": args.table, "budget": args.budget, "passes": passes,
          "stages": list(stages), "rows": records, **info}


def format_table(record: dict) -> str:
  lines = ["| row | passes | test NLL | ± s.e. (images) | ± MC | active units | published | "
           "train h |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in record["rows"]:
    if "skipped" in r:
      lines.append(f"| {r['row']} | — | skipped | | | | {r['published'] or '—'} | |")
      continue
    lines.append(f"| {r['row']} | {r['passes']} | {r['test_nll']:.2f} | "
                 f"{r['stderr_over_images']:.2f} | {r['mc_stderr']:.3f} | {r['active_units']} | "
                 f"{r['published'] or '—'} | {r['train_seconds'] / 3600:.2f} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--table", choices=sorted(TABLES), default="burda2015")
  p.add_argument("--rows", nargs="+", default=None, help="row names (default: all)")
  p.add_argument("--budget", choices=list(BUDGETS), default="full")
  p.add_argument("--runs", default=None, help="run directories (default runs/paper/TABLE-BUDGET)")
  p.add_argument("--eval-samples", type=int, default=5000)
  p.add_argument("--test-limit", type=int, default=None,
                 help="evaluate on the first N test images (default: all)")
  p.add_argument("--data", default=None,
                 help="train every row on this --data instead (e.g. digits, to test the suite)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--no-progress", action="store_true")
  p.add_argument("--out", default=None,
                 help="record path (default benchmarks/results/paper-TABLE-BUDGET.json)")
  args = p.parse_args(argv)
  record = run_table(args)
  out = pathlib.Path(args.out or RESULTS / f"paper-{args.table}-{args.budget}.json")
  out.parent.mkdir(parents=True, exist_ok=True)
  _write(out, record)
  log(format_table(record))
  log(f"record: {out}")
  return 0


if __name__ == "__main__":
  os.environ.setdefault("PYTHONUNBUFFERED", "1")
  sys.exit(main())
