"""The jvae command: usage errors, run directories, eval/sample, and crash-safe resume."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jvae.cli import main as _cli_main
from jvae.io import checkpoint
from jvae.io import images as _images

TINY = ["--hidden", "16", "--latent-dim", "2", "--batch-size", "100", "--no-progress"]


def _run_cli(args):
  return _cli_main(args)


@pytest.mark.parametrize("args, message", [
    (["train", "--epochs", "-2"], "--epochs: must be an integer >= 0, got -2"),
    (["train", "--batch-size", "0"], "--batch-size: must be an integer >= 1, got 0"),
    (["train", "--lr", "nan"], "--lr: must be a number > 0, got nan"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "--bound", "vae"], "invalid choice: 'vae'"),
    (["train", "--batch-size", "5000", "--epochs", "0"], "larger than the training set (1197"),
    (["train", "--posterior", "iaf", "--kl", "analytic", "--epochs", "0"], "no closed form"),
    (["train", "--bound", "renyi", "--estimator", "dreg", "--epochs", "0"],
     "unknown estimator 'dreg'"),
    (["train", "--seed-chunk", "0"], "--seed-chunk: must be an integer >= 1, got 0"),
    (["train", "--seed-chunk", "all"], "--seed-chunk: not an integer: 'all'"),
    (["eval"], "the following arguments are required: run_dir"),
])
def test_usage_errors_are_not_tracebacks(args, message, capsys, tmp_path):
  if args[0] == "train":
    args = [*args, "--out", str(tmp_path / "run")]
  with pytest.raises(SystemExit) as exc:
    _run_cli(args)
  assert exc.value.code == 2
  err = capsys.readouterr().err
  assert "usage: jvae" in err and message in err, err
  assert "Traceback" not in err


def test_eval_on_a_missing_run_is_a_usage_error(tmp_path, capsys):
  with pytest.raises(SystemExit):
    _run_cli(["eval", str(tmp_path)])
  assert "not a run directory" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  run = tmp_path_factory.mktemp("runs") / "digits"
  # --seed-chunk 1: the two seeds go through lax.map (auto would vmap both at once)
  assert _run_cli(["train", "--epochs", "3", "--seeds", "2", "--seed-chunk", "1",
                   "--eval-samples", "10", "--out", str(run), *TINY]) == 0
  return run


def test_train_writes_the_run_directory(trained_run, capsys):
  cfg = json.loads((trained_run / "config.json").read_text())
  assert cfg["data"] == "digits" and cfg["epochs"] == 3 and cfg["seeds"] == 2
  rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
  assert [(r["epoch"], r["seed_index"]) for r in rows] == [(e, s) for e in (1, 2, 3)
                                                          for s in (0, 1)]
  assert all(np.isfinite(r["train_bound"]) and np.isfinite(r["valid_bound"]) for r in rows)
  assert checkpoint.all_steps(trained_run / "checkpoints") == [1, 2, 3]
  summary = json.loads((trained_run / "summary.json").read_text())
  test = summary["test"]
  assert test["n"] == 2 and test["ci_low"] <= test["mean"] <= test["ci_high"]
  assert len(summary["per_seed"]["iwae_10"]) == 2
  # The per-seed IWAE bound is at least the per-seed ELBO (up to Monte-Carlo noise).
  assert all(i >= e - 0.5 for i, e in zip(summary["per_seed"]["iwae_10"],
                                          summary["per_seed"]["elbo"], strict=True))
  samples = _images.read_png(trained_run / "samples.png")
  recon = _images.read_png(trained_run / "reconstructions.png")
  assert samples.shape == ((8 * 9 + 1) * 7,) * 2  # 8x8 grid of 8x8 digits + 1px gaps, 7x
  assert recon.shape[0] < recon.shape[1] and recon.std() > 10


def test_eval_and_sample(trained_run, tmp_path, capsys):
  capsys.readouterr()
  assert _run_cli(["eval", str(trained_run), "-k", "50", "--limit", "40", "--no-progress"]) == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out["num_samples"] == 50 and len(out["per_seed"]) == 2
  for row in out["per_seed"]:
    assert row["examples"] == 40 and row["stderr"] > 0 and row["log_likelihood"] < 0
  assert out["summary"]["n"] == 2
  assert _run_cli(["eval", str(trained_run), "-k", "20", "--seed-index", "1", "--limit", "10",
                   "--no-progress"]) == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert [r["seed_index"] for r in out["per_seed"]] == [1]
  png = tmp_path / "s.png"
  assert _run_cli(["sample", str(trained_run), "-n", "12", "--out", str(png),
                   "--seed-index", "1"]) == 0
  grid = _images.read_png(png)
  assert grid.shape == ((2 * 9 + 1) * 7, (8 * 9 + 1) * 7)
  with pytest.raises(SystemExit):
    _run_cli(["sample", str(trained_run), "--out", str(png), "--seed-index", "5"])


def _final_state(run_dir):
  import jvae.cli.run as r

  cfg = json.loads((run_dir / "config.json").read_text())
  template = r.Run(cfg).init_state
  step, state, _ = checkpoint.restore_latest(run_dir / "checkpoints", template)
  return step, state


def _train_cmd(out, epochs):
  return [sys.executable, "-m", "jvae", "train", "--epochs", str(epochs), "--out", str(out),
          *TINY, "--batch-size", "20", "--eval-samples", "5"]


def test_sigkill_mid_run_then_resume_is_bitwise_identical(tmp_path):
  """A run killed with SIGKILL and resumed ends with exactly the params of an uninterrupted run."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  epochs = 12
  straight, crashed = tmp_path / "straight", tmp_path / "crashed"
  subprocess.run(_train_cmd(straight, epochs), check=True, env=env, capture_output=True)

  proc = subprocess.Popen(_train_cmd(crashed, epochs), env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  target = crashed / "checkpoints" / "ckpt_00000004" / checkpoint.MANIFEST
  deadline = time.time() + 240
  while not target.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.005)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = checkpoint.all_steps(crashed / "checkpoints")
  assert 4 <= max(done) < epochs, done  # really interrupted
  # Corrupt the newest complete checkpoint too: it must be detected and the previous one used.
  newest = crashed / "checkpoints" / f"ckpt_{max(done):08d}"
  victim = max((p for p in newest.rglob("*") if p.is_file() and p.name != checkpoint.MANIFEST),
               key=lambda p: p.stat().st_size)
  blob = bytearray(victim.read_bytes())
  blob[len(blob) // 2] ^= 0xFF
  victim.write_bytes(bytes(blob))

  resumed = subprocess.run([sys.executable, "-m", "jvae", "train", "--resume", str(crashed),
                            "--no-progress"], env=env, capture_output=True, text=True)
  assert resumed.returncode == 0, resumed.stderr
  assert "sha256" in resumed.stderr and newest.name in resumed.stderr  # corruption reported
  assert f"resuming {crashed} after epoch {max(done) - 1}" in resumed.stderr

  step_a, a = _final_state(straight)
  step_b, b = _final_state(crashed)
  assert step_a == step_b == epochs
  for x, y in zip(jax.tree_util.tree_leaves((a.train.params, a.best_params, a.train.opt_state)),
                  jax.tree_util.tree_leaves((b.train.params, b.best_params, b.train.opt_state)),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  rows = [json.loads(line) for line in (crashed / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
  ref = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
  assert [r["valid_bound"] for r in rows] == [r["valid_bound"] for r in ref]
