"""A run never loses work, and bad input never yields a number: one test per class of fault."""

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

import jvae
from jvae.cli import args as cli_args
from jvae.cli import main as _cli_main
from jvae.cli import rundir
from jvae.io import checkpoint, files

TINY = ["--hidden", "16", "--latent-dim", "2", "--batch-size", "100", "--no-progress"]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _strict_json(text):
  def refuse(name):
    raise ValueError(f"not JSON: {name}")
  return json.loads(text, parse_constant=refuse)


# -- relative paths ------------------------------------------------------------------------------

def test_checkpoint_library_takes_relative_paths(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  tree = {"w": np.arange(3.0, dtype=np.float32), "key": jax.random.key(1)}
  checkpoint.save("ckpts", 1, tree)
  step, restored, _ = checkpoint.restore_latest("ckpts", tree)
  assert step == 1 and checkpoint.all_steps("ckpts") == [1]
  np.testing.assert_array_equal(restored["w"], tree["w"])


# -- a checkpoint that does not restore is an error, never a fresh start -------------------------

def test_checkpoints_that_do_not_restore_are_an_error(tmp_path):
  checkpoint.save(tmp_path, 1, {"w": np.zeros(3, np.float32)})
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r"w: saved shape \(3,\), target"):
    checkpoint.restore_latest(tmp_path, {"w": np.zeros(4, np.float32)})
  data = max((p for p in (tmp_path / "ckpt_00000001").rglob("*")
              if p.is_file() and p.name != checkpoint.MANIFEST), key=lambda p: p.stat().st_size)
  data.write_bytes(data.read_bytes()[:-1])  # the only complete checkpoint is truncated
  with pytest.raises(checkpoint.CheckpointError, match="ckpt_00000001: file .* bytes, expected"):
    checkpoint.restore_latest(tmp_path, {"w": np.zeros(3, np.float32)})


# -- one directory per run -----------------------------------------------------------------------

def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path):
  clock = lambda: "20240101-120000"  # a frozen clock: every run starts "at the same moment"
  claims, errors = [], []

  def start(out):
    try:
      claims.append(rundir.claim(out, {"seed": 0}, root=tmp_path / "runs", clock=clock))
    except cli_args.UsageError as err:
      errors.append(err)

  threads = [threading.Thread(target=start, args=(None,)) for _ in range(8)]
  threads += [threading.Thread(target=start, args=(tmp_path / "mine",)) for _ in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  defaults = sorted(c.path.name for c in claims if c.path.parent == tmp_path / "runs")
  assert defaults == ["20240101-120000"] + [f"20240101-120000-{i}" for i in range(1, 8)]
  assert sum(c.path == tmp_path / "mine" for c in claims) == 1  # one --out, one run
  assert len(errors) == 3 and all("already holds a run" in str(e) for e in errors)
  assert all(_strict_json((c.path / "config.json").read_text()) == {"seed": 0} for c in claims)


# -- --resume refuses what it cannot change ------------------------------------------------------

def test_options_given_on_the_command_line():
  assert cli_args.explicit_train_options([]) == set()
  assert cli_args.explicit_train_options(["--lr", "1e-3", "-k", "5", "--no-progress"]) == {
      "lr", "num_samples", "no_progress"}


# -- Ctrl-C ----------------------------------------------------------------------------------------

def test_sigint_ends_with_one_line_on_how_to_resume(tmp_path):
  run = tmp_path / "run"
  # Far more epochs than can run before the signal: the run is always mid-way when it comes.
  # Python's own SIGINT handler in the child: a shell without job control starts background jobs
  # (a CI runner's, say) with SIGINT ignored, which children inherit and Python then respects.
  start = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
           "from jvae.cli import main; sys.exit(main(sys.argv[1:]))")
  proc = subprocess.Popen([sys.executable, "-c", start, "train", "--epochs", "100000", "--out",
                           str(run), *TINY, "--batch-size", "20"], env=ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 240
    # Any complete checkpoint (the first ones are pruned as later epochs finish).
    while (checkpoint.latest_step(run / "checkpoints") is None and proc.poll() is None
           and time.time() < deadline):
      time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
  finally:  # never leave a 100,000-epoch run behind
    if proc.poll() is None:
      proc.kill()
      proc.communicate()
  assert proc.returncode == 130, err
  lines = err.strip().splitlines()
  step = checkpoint.latest_step(run / "checkpoints")
  assert len(lines) == 1 and "Traceback" not in err, err
  assert f"epoch {step}" in lines[0] and f"jvae train --resume {run}" in lines[0]
  assert not (run / "summary.json").exists() and out == ""
  rows = [_strict_json(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert max(r["epoch"] for r in rows) >= step


def test_json_files_are_written_whole_and_strict(tmp_path):
  files.write_json(tmp_path / "s.json", {"a": -math.inf, "b": [math.nan, 1.5], "c": np.float32(2)})
  assert _strict_json((tmp_path / "s.json").read_text()) == {"a": None, "b": [None, 1.5], "c": 2.0}
  assert [p.name for p in tmp_path.iterdir()] == ["s.json"]  # no temporary file left
  rundir.append_metrics(tmp_path / "m.jsonl", [{"train_bound": math.nan}])
  assert _strict_json((tmp_path / "m.jsonl").read_text()) == {"train_bound": None}


# -- a run that fails early leaves nothing behind ------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--posterior", "fullcov", "--free-bits", "0.5"], "only --posterior gaussian has"),
    (["--posterior", "iaf", "--free-bits", "0.5"], "only --posterior gaussian has"),
    (["--free-bits", "0.5", "--free-bits-groups", "3"], "does not divide the latent size 8"),
    (["--model", "kingma2014", "--free-bits", "1", "--free-bits-groups", "8"],
     "does not divide the latent size 20"),
    (["--bound", "iwae", "-k", "5", "--free-bits", "0.5"], "--free-bits applies to --bound elbo"),
    (["--free-bits-groups", "2"], "--free-bits-groups needs --free-bits"),
    (["--estimator", "stl", "--kl", "analytic"], "needs --kl sample"),
    (["--bound", "ciwae", "--estimator", "dreg"], "--bound ciwae takes --estimator reparam or stl"),
    (["--bound", "piwae", "--estimator", "stl"], "--bound piwae takes --estimator reparam or dreg"),
    (["--bound", "iwae", "--groups", "2"], "--groups 2 applies to --bound miwae/piwae only"),
    (["--bound", "ciwae", "--elbo-weight", "1.5"], "--elbo-weight must be in [0, 1]"),
    (["--bound", "iwae", "--alpha", "0.3"], "--alpha applies to --bound renyi only"),
    (["--model", "burda2015", "--hidden", "8"], "--hidden applies to --model mlp only"),
])
def test_impossible_combinations_are_refused_before_any_file(args, message, tmp_path, capsys):
  with pytest.raises(SystemExit) as exc:
    _cli_main(["train", *args, "--out", str(tmp_path / "run")])
  assert exc.value.code == 2
  assert message in capsys.readouterr().err
  assert list(tmp_path.iterdir()) == []


def test_the_corrected_command_runs_after_a_failed_one(tmp_path, monkeypatch, capsys):
  out = ["--out", str(tmp_path / "run"), "--epochs", "0", "--eval-samples", "5", *TINY]
  with pytest.raises(SystemExit):  # free bits need a factorized posterior
    _cli_main(["train", "--posterior", "iaf", "--free-bits", "0.5", *out])

  def fails(*args, **kwargs):
    raise RuntimeError("failed before the first checkpoint")

  monkeypatch.setattr(jvae, "fit", fails)
  with pytest.raises(RuntimeError):
    _cli_main(["train", "--posterior", "iaf", *out])
  assert not (tmp_path / "run").exists()
  monkeypatch.undo()
  assert _cli_main(["train", "--posterior", "iaf", *out]) == 0
  summary = _strict_json((tmp_path / "run" / "summary.json").read_text())
  assert summary["epochs_run"] == 0 and summary["best_valid_bound"] == [None]  # was -Infinity


# -- eval's two standard errors ------------------------------------------------------------------

def test_eval_reports_both_standard_errors():
  from jvae.cli import run as r

  row = r._eval_row(np.array([-1.0, -2.0, -3.0, -4.0]), np.array([0.1, 0.1, 0.1, 0.1]))
  assert set(row) == set(r.EVAL_KEYS) - {"seed_index"}
  assert row["mc_stderr"] == pytest.approx(0.2 / 4)
  assert row["stderr_over_images"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
  assert row["log_likelihood"] == -2.5 and row["examples"] == 4


def test_parse_time_checks_agree_with_the_objectives():
  """An estimator/KL combination passes the parse-time check iff its objective can be built."""
  from jvae.cli import run as r

  parser = cli_args.build_parser()
  for bound in cli_args.BOUNDS:
    for estimator in cli_args.ESTIMATORS:
      for kl in ([None, "analytic", "sample"] if bound == "elbo" else [None]):
        argv = ["train", "--bound", bound, "--estimator", estimator, "-k", "2"]
        argv += ["--kl", kl] if kl else []
        args = parser.parse_args(argv)
        problems = cli_args._option_problems(vars(args), cli_args.explicit_train_options(argv[1:]))
        cfg = r._config_from_args(args)
        model = r.build_model(cfg, (64,))
        try:
          r.build_bound(model, cfg, for_training=True)
          built = True
        except ValueError:
          built = False
        assert built == (not problems), (argv, problems)
