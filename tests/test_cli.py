"""The jvae command: usage errors, run directories, eval/sample, and crash-safe resume."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import jvae
from jvae.cli import args as cli_args
from jvae.cli import main as _cli_main
from jvae.cli import rundir
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
     "--bound renyi takes --estimator reparam or stl, not dreg"),
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
  assert not (tmp_path / "run").exists()  # refused before anything was written


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


def _strict_json(text):
  """Parses ``text`` as RFC 8259 JSON: NaN and ±Infinity are errors."""
  def refuse(name):
    raise ValueError(f"not JSON: {name}")
  return json.loads(text, parse_constant=refuse)


def test_train_writes_the_run_directory(trained_run, capsys):
  cfg = _strict_json((trained_run / "config.json").read_text())
  assert cfg["data"] == "digits" and cfg["epochs"] == 3 and cfg["seeds"] == 2
  rows = [_strict_json(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
  assert [(r["epoch"], r["seed_index"]) for r in rows] == [(e, s) for e in (1, 2, 3)
                                                          for s in (0, 1)]
  assert all(np.isfinite(r["train_bound"]) and np.isfinite(r["valid_bound"]) for r in rows)
  # The two seeds are different replicas, and each one's best bound is its best epoch's bound.
  assert rows[-1]["train_bound"] != rows[-2]["train_bound"]
  for s in (0, 1):
    mine = [r for r in rows if r["seed_index"] == s]
    assert mine[-1]["best_valid_bound"] == max(r["valid_bound"] for r in mine)
  assert checkpoint.all_steps(trained_run / "checkpoints") == [1, 2, 3]
  summary = _strict_json((trained_run / "summary.json").read_text())
  test, per_seed = summary["test"], summary["per_seed"]["iwae_10"]
  assert len(per_seed) == 2 and per_seed[0] != per_seed[1]
  # The 95% Student-t interval over the 2 seeds: t_{0.975, 1} = 12.706.
  half = 12.7062 * np.std(per_seed, ddof=1) / np.sqrt(2)
  assert test["n"] == 2 and test["mean"] == pytest.approx(np.mean(per_seed))
  assert (test["ci_low"], test["ci_high"]) == pytest.approx((test["mean"] - half,
                                                             test["mean"] + half), rel=1e-4)
  # The per-seed IWAE bound is at least the per-seed ELBO (up to Monte-Carlo noise).
  assert all(i >= e - 0.5 for i, e in zip(summary["per_seed"]["iwae_10"],
                                          summary["per_seed"]["elbo"], strict=True))
  samples = _images.read_png(trained_run / "samples.png")
  recon = _images.read_png(trained_run / "reconstructions.png")
  assert samples.shape == ((8 * 9 + 1) * 7,) * 2  # 8x8 grid of 8x8 digits + 1px gaps, 7x
  assert recon.shape[0] < recon.shape[1] and recon.std() > 10


def test_reconstructions_show_labelled_examples_from_the_whole_test_set(trained_run):
  import sklearn.datasets

  idx = _images.spread_indices(300, 16)
  assert idx[0] == 0 and idx[-1] == 299 and np.all(np.diff(idx) >= 19)
  perm = np.random.default_rng(0).permutation(1797)  # the digits split of jvae.data
  labels = sklearn.datasets.load_digits().target[perm][1497:]
  assert len(set(labels[idx])) >= 6  # several classes, whatever the order of the test split

  png = _images.read_png(trained_run / "reconstructions.png")[::7, ::7]
  margin = max(_images.text_bitmap(w).shape[1] for w in ("data", "recon")) + 2
  assert png.shape == (2 * 9 + 1, margin + 16 * 9 + 1)
  for row, word in enumerate(("data", "recon")):  # the rows' labels, in the left margin
    top = 1 + row * 9 + (8 - _images.FONT_HEIGHT) // 2
    text = _images.text_bitmap(word)
    np.testing.assert_array_equal(png[top:top + 5, 1:1 + text.shape[1]] == 0, text)
  test = jvae.data.load("digits").test
  for c, i in enumerate(idx):  # the data row shows test images idx
    cell = png[1:9, margin + 1 + 9 * c:margin + 9 + 9 * c]
    np.testing.assert_array_equal(cell, np.round(test[i].reshape(8, 8) * 255))


def test_eval_by_ais_and_the_gap_report(trained_run, capsys):
  """``jvae eval --method ais`` and ``jvae gap``, tiny budgets: the plumbing, not the figures."""
  capsys.readouterr()
  assert _run_cli(["eval", str(trained_run), "--method", "ais", "--ais-steps", "4",
                   "--ais-chains", "2", "--limit", "6", "--seed-index", "0",
                   "--no-progress"]) == 0
  out = _strict_json(capsys.readouterr().out.strip().splitlines()[-1])
  assert out["method"] == "ais" and out["ais_steps"] == 4 and "num_samples" not in out
  (row,) = out["per_seed"]
  assert row["examples"] == 6 and row["log_likelihood"] < 0 and row["mc_stderr"] > 0
  before = {p.name for p in trained_run.iterdir()}
  for _ in range(2):
    assert _run_cli(["gap", str(trained_run), "--num-points", "3", "-k", "20",
                     "--local-steps", "3", "--eval-samples", "8"]) == 0
  text = capsys.readouterr().out
  assert "amortization gap" in text
  written = sorted({p.name for p in trained_run.iterdir()} - before)
  assert written == ["gap-test-3-2.json", "gap-test-3.json"]  # the second never overwrites
  gap = _strict_json((trained_run / "gap-test-3.json").read_text())
  assert gap["num_points"] == 3 and gap["seed_index"] == 0
  m = gap["mean"]
  assert m["inference_gap"] == pytest.approx(m["log_marginal"] - m["elbo_amortized"], abs=1e-4)


def test_eval_and_sample(trained_run, tmp_path, capsys):
  capsys.readouterr()
  assert _run_cli(["eval", str(trained_run), "-k", "50", "--limit", "40", "--no-progress"]) == 0
  out = _strict_json(capsys.readouterr().out.strip().splitlines()[-1])
  assert out["num_samples"] == 50 and len(out["per_seed"]) == 2
  for row in out["per_seed"]:
    assert set(row) == {"seed_index", "log_likelihood", "nll", "mc_stderr",
                        "stderr_over_images", "examples"}
    assert row["examples"] == 40 and row["log_likelihood"] < 0
    assert row["nll"] == -row["log_likelihood"]
    # 50 samples pin each image's log p(x) down far better than 40 images pin down the mean.
    assert 0 < row["mc_stderr"] < row["stderr_over_images"]
  assert out["summary"]["n"] == 2
  assert out["summary"]["mean"] == pytest.approx(np.mean([r["log_likelihood"]
                                                          for r in out["per_seed"]]))
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


def _hashes(directory):
  return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_relative_run_directory_works_for_eval_and_resume(trained_run, tmp_path, monkeypatch,
                                                            capsys):
  monkeypatch.chdir(trained_run.parent)
  capsys.readouterr()
  assert _run_cli(["eval", trained_run.name, "-k", "5", "--limit", "10", "--seed-index", "0",
                   "--no-progress"]) == 0
  assert _strict_json(capsys.readouterr().out)["per_seed"][0]["examples"] == 10
  shutil.copytree(trained_run, tmp_path / "copy")
  monkeypatch.chdir(tmp_path)
  # --epochs and --patience may change on resume; the other options given equal the saved ones.
  assert _run_cli(["train", "--resume", "copy", "--epochs", "4", "--patience", "5",
                   "--hidden", "16", "--no-progress"]) == 0
  assert f"resuming {tmp_path / 'copy'} after epoch 3" in capsys.readouterr().err
  rows = [_strict_json(line) for line in (tmp_path / "copy" / "metrics.jsonl").read_text()
          .splitlines()]
  assert [r["epoch"] for r in rows] == [1, 1, 2, 2, 3, 3, 4, 4]
  cfg = _strict_json((tmp_path / "copy" / "config.json").read_text())
  assert (cfg["epochs"], cfg["patience"]) == (4, 5)
  assert checkpoint.all_steps(tmp_path / "copy" / "checkpoints") == [2, 3, 4]


def test_the_final_test_holds_one_seed_and_one_chunk_of_samples(trained_run):
  """The test bounds of ``jvae train``: its memory grows neither with K nor with the seeds (a run
  of 8 seeds tested with K = 2,000 holds what 2 seeds with K = 40 do)."""
  import jax.numpy as jnp

  import jvae.cli.run as r

  run = r.Run(json.loads((trained_run / "config.json").read_text()))
  test_x = jax.tree_util.tree_map(jnp.asarray, run.data.test)

  def temp_bytes(k, seeds):
    bound = r._test_bounds(run, k)[f"iwae_{k}"]
    params = jax.tree_util.tree_map(lambda a: jnp.concatenate([a] * (seeds // a.shape[0])),
                                    run.init_state.best_params)
    keys = jnp.stack([jax.random.key(i) for i in range(seeds)])
    program = r._per_seed_program(
        lambda p, key: jvae.evaluate(bound, p, key, test_x, batch_size=r.TEST_BATCH))
    return program.lower(params, keys).compile().memory_analysis().temp_size_in_bytes

  small, large = temp_bytes(r.TEST_CHUNK, 2), temp_bytes(50 * r.TEST_CHUNK, 8)
  assert large < 1.25 * small, (small, large)


def test_resume_into_a_mismatched_config_changes_nothing(trained_run, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(trained_run, run)
  cfg = json.loads((run / "config.json").read_text())
  (run / "config.json").write_text(json.dumps({**cfg, "hidden": [32]}))
  before = _hashes(run)
  out = subprocess.run([sys.executable, "-m", "jvae", "train", "--resume", str(run),
                        "--no-progress"], env={**os.environ, "JAX_PLATFORMS": "cpu"},
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 1, out.stderr
  assert len(out.stderr.strip().splitlines()) < 5, out.stderr[:3000]
  assert str(run) in out.stderr and "does not fit" in out.stderr
  assert "saved shape (2, 16, 64), target (2, 32, 64)" in out.stderr  # what did not match
  assert _hashes(run) == before


def test_resume_refuses_options_that_contradict_the_run(trained_run, tmp_path, capsys):
  run = tmp_path / "run"
  shutil.copytree(trained_run, run)
  cfg = json.loads((run / "config.json").read_text())
  (run / "config.json").write_text(json.dumps({**cfg, "lr": 0.01}))
  before = _hashes(run)
  capsys.readouterr()
  with pytest.raises(SystemExit) as exc:  # --lr 1e-3 is the parser's default, yet given
    _run_cli(["train", "--resume", str(run), "--lr", "1e-3", "--bound", "iwae", "--epochs", "9",
              "--hidden", "16"])
  assert exc.value.code == 2
  err = capsys.readouterr().err
  assert "--lr: saved 0.01, given 0.001" in err and "--bound: saved elbo, given iwae" in err
  assert "--hidden:" not in err and "--epochs:" not in err  # equal to the run's / may change
  assert _hashes(run) == before
  args = cli_args.build_parser().parse_args(["train", "--resume", str(run), "--epochs", "9"])
  assert rundir.resumed_config(cfg, args, {"resume", "epochs"}, list(cfg)) == {**cfg, "epochs": 9}
  # where it runs may change (another machine), if the seeds still split over the devices
  args = cli_args.build_parser().parse_args(["train", "--resume", str(run), "--devices", "2",
                                             "--parallel", "seeds"])
  given = {"resume", "devices", "parallel"}
  assert rundir.resumed_config(cfg, args, given, list(cfg)) == {**cfg, "devices": 2,
                                                                 "parallel": "seeds"}
  args = cli_args.build_parser().parse_args(["train", "--resume", str(run), "--devices", "3",
                                             "--parallel", "seeds"])
  with pytest.raises(cli_args.UsageError, match=r"--seeds \(2\) to be a multiple of --devices "
                     r"\(3\)"):
    rundir.resumed_config(cfg, args, given, list(cfg))


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


@pytest.mark.xla_defaults  # bitwise across two compiled programs
def test_seed_i_of_a_chunk_1_run_is_the_one_seed_run_of_seed_plus_i(trained_run, tmp_path):
  """Seed 1 of trained_run (seed 0, --seeds 2 --seed-chunk 1) is the one-seed run of seed 1."""
  one_dir = tmp_path / "seed1"
  assert _run_cli(["train", "--epochs", "3", "--seed", "1", "--eval-samples", "10",
                   "--out", str(one_dir), *TINY]) == 0
  _, both = _final_state(trained_run)
  _, one = _final_state(one_dir)
  for a, b in zip(jax.tree_util.tree_leaves((both.train.params, both.best_params)),
                  jax.tree_util.tree_leaves((one.train.params, one.best_params)), strict=True):
    np.testing.assert_array_equal(np.asarray(a)[1], np.asarray(b)[0])
  rows = [json.loads(x) for x in (one_dir / "metrics.jsonl").read_text().splitlines()]
  mine = [json.loads(x) for x in (trained_run / "metrics.jsonl").read_text().splitlines()
          if json.loads(x)["seed_index"] == 1]
  for key in ("train_bound", "valid_bound"):
    assert [r[key] for r in mine] == [r[key] for r in rows]
  test_one = json.loads((one_dir / "summary.json").read_text())["per_seed"]
  test_both = json.loads((trained_run / "summary.json").read_text())["per_seed"]
  for name in ("elbo", "iwae_10"):
    assert test_one[name][0] == pytest.approx(test_both[name][1], abs=1e-4)
