"""The benchmark harness, the report, the matmul floor, and
``evaluate_pointwise``, the library helper the benchmarks evaluate with. Speed itself is measured
by the benchmarks, not here."""

import json
import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jvae
from benchmarks import _harness as h
from benchmarks import _report, evaluation, peers, precision, throughput
from jvae.training.evaluation import evaluate_pointwise


@pytest.fixture(scope="module")
def small():
  model = jvae.burda2015(event_shape=(784,))
  x = (np.random.default_rng(0).random((250, 784)) < 0.13).astype(np.float32)
  params = model.init(jax.random.key(0), x[:2])
  lm = jvae.log_marginal(model, num_samples=20, chunk_size=8, return_stderr=True)
  return model, params, jnp.asarray(x), lm


def test_pointwise_matches_evaluate_and_the_bound_per_batch(small):
  _, params, x, lm = small
  key = jax.random.key(3)
  out = jax.jit(lambda p, k, d: evaluate_pointwise(lm, p, k, d, batch_size=50))(params, key, x)
  mean, se = jax.jit(lambda p, k, d: jvae.evaluate(lm, p, k, d, batch_size=50))(params, key, x)
  np.testing.assert_allclose(out["mean"], mean, rtol=1e-6)
  np.testing.assert_allclose(out["mc_stderr"], se, rtol=1e-5)
  value, stderr = lm(params, jax.random.fold_in(key, 2), x[100:150])
  np.testing.assert_allclose(out["values"][100:150], value, rtol=1e-5)
  np.testing.assert_allclose(out["stderrs"][100:150], stderr, rtol=1e-4, atol=1e-6)
  values = np.asarray(out["values"])
  assert out["values"].shape == out["stderrs"].shape == (250,)
  np.testing.assert_allclose(out["stderr_over_examples"], values.std(ddof=1) / math.sqrt(250),
                             rtol=1e-4)


def test_pointwise_last_batch_overlaps_without_padding(small):
  _, params, x, lm = small
  key = jax.random.key(4)
  f = lambda p, k, d: evaluate_pointwise(lm, p, k, d, batch_size=100)  # 250 = 2 × 100 + 50
  out = jax.jit(f)(params, key, x)
  value, _ = lm(params, jax.random.fold_in(key, 2), x[150:])  # the last batch: the last 100
  np.testing.assert_allclose(out["values"][150:], value, rtol=1e-5)
  first, _ = lm(params, jax.random.fold_in(key, 0), x[:100])
  np.testing.assert_allclose(out["values"][:100], first, rtol=1e-5)
  assert np.isfinite(np.asarray(out["values"])).all()
  # the data set is read in place: the working set does not grow with N (no padded copy)
  temp = [h.compile_ahead(f, params, key, jnp.tile(x, (r, 1)))[0].memory_analysis()
          .temp_size_in_bytes for r in (1, 4)]
  assert temp[1] - temp[0] < 0.25 * 3 * x.nbytes


def test_pointwise_plain_bound_batches_and_dtypes(small):
  model, params, x, lm = small
  key = jax.random.key(5)
  out = evaluate_pointwise(jvae.elbo(model), params, key, x[:30], batch_size=7)
  assert out["stderrs"] is None and out["mc_stderr"] is None and out["values"].shape == (30,)
  one = evaluate_pointwise(jvae.elbo(model), params, key, x[:1])
  assert one["values"].shape == (1,) and np.isnan(one["stderr_over_examples"])
  as_uint8 = evaluate_pointwise(lm, params, key, x[:60].astype(jnp.uint8), batch_size=20)
  as_float = evaluate_pointwise(lm, params, key, x[:60], batch_size=20)
  np.testing.assert_array_equal(as_uint8["values"], as_float["values"])
  batch = evaluate_pointwise(lm, params, key, jvae.Batch(x[:60]), batch_size=20)
  np.testing.assert_array_equal(batch["values"], as_float["values"])
  with pytest.raises(ValueError, match="batch_size"):
    evaluate_pointwise(lm, params, key, x, batch_size=0)


def test_alternate_rotates_warms_up_and_takes_medians():
  calls = []
  runs = {name: (lambda name=name: calls.append(name) or name) for name in "abc"}
  seen = []
  rounds = h.alternate(runs, rounds=4, warmup=1, on_round=lambda r, t: seen.append(r))
  assert calls[:3] == ["a", "b", "c"]  # warm-up, each once
  assert calls[3:] == list("abc" "bca" "cab" "abc")  # every run takes every position
  assert seen == [0, 1, 2, 3] and rounds.last == {"a": "a", "b": "b", "c": "c"}
  assert all(len(rounds.wall[n]) == 4 and rounds.first[n] is not None for n in "abc")
  assert rounds.median("a") == statistics.median(rounds.wall["a"])
  state = h.Carry(lambda s, d: (s + d, {"bound": s}), 1, 2)
  h.alternate({"carry": state}, rounds=2)
  assert state.state == 5 and state.out == {"bound": 3}


def test_goals_are_checked_once_and_rendered_from_the_record(tmp_path, capsys):
  goals = [h.Goal("ratio", ">=", 1.1, "jvae / peer"), h.Goal("secs", "<=", 2.0, "time", " s"),
           h.Goal("gpu", ">=", 20.0, "on a GPU")]
  checked = h.check(goals, {"ratio": 1.0, "secs": 1.5})
  assert [g["met"] for g in checked] == [False, True, None]
  with pytest.raises(ValueError):
    h.Goal("x", ">", 1.0, "x")
  rec = h.record("throughput", {"jvae_steps_per_s": 1.0, "hand_steps_per_s": 1.0, "ratio": 1.0,
                                "bad": float("nan")}, goals=checked)
  h.emit(rec, tmp_path / "throughput.json")
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bad"] == "nan"
  assert json.loads((tmp_path / "throughput.json").read_text())["git_commit"] is not None
  text = _report.render(tmp_path, tmp_path / "B.md").read_text()
  assert "- goal: jvae / peer ≥ 1.1: **missed** by 9% (1.00 against 1.1)" in text
  assert "- goal: time ≤ 2 s: met" in text
  assert "- goal: on a GPU ≥ 20: not measured on this device" in text
  assert "No record yet" in text  # the other sections


def test_report_renders_records_written_before_the_harness(tmp_path):
  legacy = {"benchmark": "peers", "rows": [{"impl": "jvae", "steps_per_s": 300.0}],
            "ratios": {"jvae_vs_torch": 1.05}, "goals": {"jvae_vs_torch_min": 1.6},
            "goals_met": {"jvae_vs_torch": False}}
  (tmp_path / "peers.json").write_text(json.dumps(legacy))
  text = _report.render(tmp_path, tmp_path / "B.md").read_text()
  assert "- goal: jvae_vs_torch ≥ 1.6: **missed** by 34% (1.05 against 1.6)" in text


def test_a_section_without_a_record_keeps_its_previous_text(tmp_path):
  """Records are not committed: re-rendering in a checkout that lacks a long run's record (a paper
  table) carries that section over from the old report, its tagged variants included, while a
  section with a record is rendered anew and one never recorded says how to make it."""
  out = tmp_path / "B.md"
  paper_a = ("## Published tables: Burda et al. (2015) (burda2015-short)\n\nScript: x. "
             "jvae 0.1.0 @ abc123.\n\n| row | 88.72 |\n")
  paper_b = "## Published tables: Burda et al. (2015) (burda2015-third)\n\n| row | 88.86 |\n"
  out.write_text(f"# old\n\n## Training throughput: abstraction cost\n\nold figure 1.23\n\n"
                 f"{paper_a}\n{paper_b}\n## Test log-likelihood on binarized MNIST\n\n"
                 "No record yet: run it.\n")
  rec = h.record("throughput", {"jvae_steps_per_s": 2.0, "hand_steps_per_s": 1.0, "ratio": 2.0})
  h.emit(rec, tmp_path / "throughput.json")
  text = _report.render(tmp_path, out).read_text()
  assert paper_a in text and paper_b in text and text.index(paper_a) < text.index(paper_b)
  assert "old figure 1.23" not in text and "Ratio jvae / hand-written: **2.000**" in text
  assert "## Test log-likelihood on binarized MNIST\n\nNo record yet: run `python -m benchmarks" \
      in text
  assert _report.render(tmp_path, out).read_text() == text  # rendering again changes nothing


def test_a_tagged_record_alone_keeps_the_untagged_section(tmp_path):
  """A device's tagged record brought back into a checkout without the CPU's records adds its
  section beside the CPU's previous one, which stays as it was."""
  out = tmp_path / "B.md"
  cpu = "## Training throughput: abstraction cost\n\nScript: x. cpu figure 1.23\n"
  out.write_text(f"# old\n\n{cpu}")
  rec = h.record("throughput", {"jvae_steps_per_s": 2.0, "hand_steps_per_s": 1.0, "ratio": 2.0})
  h.emit(rec, tmp_path / "throughput-h100.json")
  text = _report.render(tmp_path, out).read_text()
  tagged = "## Training throughput: abstraction cost (h100)"
  assert cpu in text and tagged in text and text.index(cpu) < text.index(tagged)
  assert "Ratio jvae / hand-written: **2.000**" in text


def test_matmul_floor_has_the_dots_of_a_training_step():
  data = jnp.asarray(h.random_binary((300,))[0])
  floor = peers.Floor(data, jax.random.key(0))
  floor.compile()
  acc, _ = floor.epoch()
  assert all(np.isfinite(np.asarray(a)).all() for a in acc)
  epoch_fn, state = throughput.jvae_setup(data, jax.random.key(1))
  compiled, _ = h.compile_ahead(epoch_fn, state, data, donate=True)
  assert peers.count_dots(floor.compiled) == 20  # 7 forward, 7 weight- and 6 input-gradient dots
  # jvae's step: the same matmuls as 17 dots (its preset computes the loc and scale heads as one
  # dot of width 2d: 6 forward, 6 weight-gradient, 5 input-gradient) and 7 more, the guard's sums
  # of the matrix gradients as products with a vector of ones (jvae.training.steps).
  assert peers.count_dots(compiled) == 24


def test_scripts_run_with_tiny_options(tmp_path, capsys):
  out = tmp_path / "evaluation.json"
  assert evaluation.main(["--images", "20", "--num-samples", "10", "--batch-size", "10",
                          "--out", str(out)]) == 0
  rec = json.loads(out.read_text())
  assert set(rec["extra_memory_bytes"]) == {"10", "500", "5000", "50000"}
  assert {g["name"] for g in rec["goals"]} >= {"cpu_seconds", "extra_memory_mb",
                                               "extra_memory_growth"}
  growth = next(g for g in rec["goals"] if g["name"] == "extra_memory_growth")
  memory = rec["extra_memory_bytes"]
  # every K above the timed 10 is a larger K; the 10-sample program is a single step
  assert growth["value"] == pytest.approx(max(memory[str(k)] for k in evaluation.MEMORY_KS)
                                          / memory["10"])
  assert growth["met"] is (growth["value"] <= 1.1)
  out = tmp_path / "peers.json"
  assert peers.main(["--impls", "jvae", "jvae_sub_batches", "matmul_floor", "--steps", "2",
                     "--rounds", "1", "--out", str(out)]) == 0
  rec = json.loads(out.read_text())
  assert [r["impl"] for r in rec["rows"]] == ["jvae", "jvae_sub_batches", "matmul_floor"]
  assert rec["ratios"]["jvae_vs_matmul_floor"] > 0
  assert rec["ratios"]["jvae_sub_batches_vs_matmul_floor"] > 0
  assert {g["name"] for g in rec["goals"]} >= {"jvae_vs_matmul_floor",
                                               "jvae_sub_batches_vs_fastest_jax_peer"}
  assert rec["sub_batch_options"] == peers.SUB_BATCH_OPTIONS
  assert rec["torch_device"] is None  # torch_eager was not asked for
  out = tmp_path / "precision.json"
  assert precision.main(["--steps", "2", "--rounds", "1", "--warmup", "0", "--eval-samples",
                         "4", "--eval-images", "10", "--out", str(out)]) == 0
  rec = json.loads(out.read_text())
  assert set(rec["train_steps_per_s"]) == {"float32", "bfloat16"}
  assert 0 < rec["eval_effect_mean_abs"] < 1.0 and np.isfinite(rec["train_effect"])
  assert "tf32_eval_effect_mean" not in rec  # a CPU: no "highest" side unless asked for
  high = tmp_path / "precision-highest.json"
  assert precision.main(["--steps", "2", "--rounds", "1", "--warmup", "0", "--eval-samples",
                         "4", "--eval-images", "10", "--highest-side", "--out", str(high)]) == 0
  rec = json.loads(high.read_text())
  assert set(rec["train_steps_per_s"]) == {"float32", "bfloat16", "float32_highest"}
  ambient = jax.config.jax_default_matmul_precision  # None unless the environment sets one
  assert rec["matmul_precision"] == {"float32": ambient, "bfloat16": ambient,
                                     "float32_highest": "highest"}
  # a CPU's float32 dots are float32 at either precision: no effect, up to fusion order
  assert rec["tf32_eval_effect_max_abs"] < 1e-3 and abs(rec["tf32_train_effect"]) < 1e-2
  text = _report.render(tmp_path, tmp_path / "B.md").read_text()
  assert "matmul_floor" in text and "peak extra memory" in text
  options = ", ".join(f"{k}={v}" for k, v in peers.SUB_BATCH_OPTIONS.items())
  assert f"`jvae_sub_batches` is `jvae.trainer(..., {options})`" in text
  assert "bf16 / f32" in text and "Effect on the bound" in text
  assert text.count("against `jax.default_matmul_precision") == 1  # the highest side's record
