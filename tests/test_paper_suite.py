"""The paper protocol's pieces: the staged learning rate, dynamic binarization, active units, the
``jvae train --lr-stages/--adam-eps`` options and the resumable ``benchmarks.paper`` driver."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jvae


def test_staged_learning_rate_is_burdas_schedule():
  steps = 7
  schedule = jvae.staged_learning_rate(1e-3, stage_epochs=jvae.BURDA2015_STAGES,
                                       steps_per_epoch=steps)
  start = 0
  for i, epochs in enumerate(jvae.BURDA2015_STAGES):
    want = 1e-3 * 10 ** (-i / 7)
    for count in (start, start + epochs * steps - 1):
      np.testing.assert_allclose(float(schedule(count)), want, rtol=1e-5)
    start += epochs * steps
  assert start == 3280 * steps
  np.testing.assert_allclose(float(schedule(10 * start)), 1e-4, rtol=1e-5)  # the last rate stays


def test_scaled_stages_keep_the_shape():
  assert sum(jvae.scaled_stages(jvae.BURDA2015_STAGES, 1)) == 3280
  assert jvae.scaled_stages(jvae.BURDA2015_STAGES, 3) == (1, 1, 3, 9, 27, 81, 243, 729)
  assert sum(jvae.scaled_stages(jvae.BURDA2015_STAGES, 9)) == 366
  assert jvae.scaled_stages(jvae.BURDA2015_STAGES, 10**6) == (1,) * 8


@pytest.mark.parametrize("bad", [dict(stage_epochs=()), dict(stage_epochs=(1, 0)),
                                 dict(steps_per_epoch=0)])
def test_staged_learning_rate_refuses_bad_stages(bad):
  kwargs = {"stage_epochs": (1, 3), "steps_per_epoch": 5, **bad}
  with pytest.raises(ValueError, match="stage_epochs|steps_per_epoch"):
    jvae.staged_learning_rate(1e-3, **kwargs)


def test_trainer_follows_the_schedule():
  """After a stage's steps the optimizer's step size is the next stage's (checked via SGD)."""
  schedule = jvae.staged_learning_rate(1.0, stage_epochs=(1, 1), steps_per_epoch=2)
  opt = optax.sgd(schedule)
  params = {"w": jnp.zeros(())}
  state = opt.init(params)
  sizes = []
  for _ in range(4):
    updates, state = opt.update({"w": jnp.ones(())}, state, params)
    sizes.append(-float(updates["w"]))
  np.testing.assert_allclose(sizes, [1.0, 1.0, 0.1, 0.1], rtol=1e-6)


def _vae_and_data(n=400, seed=0):
  model = jvae.mlp_vae(event_shape=(16,), hidden=(32,), latent_dim=4)
  x = (jax.random.uniform(jax.random.key(seed), (n, 16)) < 0.4).astype(jnp.float32)
  return model, model.init(jax.random.key(1), x[:2]), x


def test_dynamic_binarization_draws_fresh_binary_batches():
  _, params, _ = _vae_and_data()
  probs = jnp.full((3, 16), 0.3)

  def spy(params, key, batch, **kwargs):  # returns the batch it was given
    return batch

  f = jax.jit(jvae.dynamic_binarization(spy))
  draws = np.stack([np.asarray(f(params, jax.random.key(k), probs)) for k in range(200)])
  np.testing.assert_array_equal(draws[7], jvae.dynamic_binarization(spy)(
      params, jax.random.key(7), probs))  # the same without jit
  assert set(np.unique(draws)) <= {0.0, 1.0}
  assert len({d.tobytes() for d in draws}) > 150  # fresh at every key
  # 200 × 48 Bernoulli(0.3) draws: the mean is within 4 s.e. (0.0094) of 0.3.
  assert abs(draws.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / draws.size)


def test_dynamic_binarization_keeps_a_stateful_objective_and_gradients():
  model, params, x = _vae_and_data()
  base = jvae.elbo(model)
  f = jvae.dynamic_binarization(base)
  probs = x[:8] * 0.8 + 0.1
  g = jax.grad(lambda p: jnp.mean(f(p, jax.random.key(0), probs)))(params)
  assert all(np.all(np.isfinite(a)) for a in jax.tree_util.tree_leaves(g))
  # On binary data the draw is the data itself: the same as the objective at the split key.
  k_obj = jax.random.split(jax.random.key(5))[1]
  np.testing.assert_allclose(f(params, jax.random.key(5), x[:8]), base(params, k_obj, x[:8]),
                             rtol=1e-6)
  state_fn = jvae.elbo(jvae.DiscreteVAE(event_shape=(16,), num_latents=3, hidden=(8,)),
                       estimator="score", baseline="ema")
  wrapped = jvae.dynamic_binarization(state_fn)
  assert callable(wrapped.with_state) and wrapped.init_state is state_fn.init_state


def test_active_units_exact_and_sampled_agree_and_find_dead_units():
  model, params, x = _vae_and_data(n=600)
  # Kill latent units 0 and 1: their posterior mean no longer depends on x.
  loc = params["params"]["encoder"]["head"]["loc"]
  loc = {**loc, "kernel": loc["kernel"].at[:, :2].set(0.0)}
  head = {**params["params"]["encoder"]["head"], "loc": loc}
  params = {"params": {**params["params"], "encoder": {**params["params"]["encoder"],
                                                        "head": head}}}
  exact = jvae.active_units(model, params, jax.random.key(0), x, threshold=1e-6)
  assert exact.exact_mean and exact.active == [2] and exact.total == 2
  np.testing.assert_allclose(exact.activity[0][:2], 0.0, atol=1e-10)

  class SampledOnly:  # the contract alone: E_q[u] is sampled
    def propose(self, *a, **k):
      return model.propose(*a, **k)

    def log_joint(self, *a, **k):
      return model.log_joint(*a, **k)

  sampled = jvae.active_units(SampledOnly(), params, jax.random.key(1), x, num_samples=8,
                              threshold=1e-6)
  assert not sampled.exact_mean
  # The bias E_x Var_q / S (≈ 1/8 for the dead units) is removed: within 0.02 of exact
  # (600 points; measured max deviation 0.006).
  np.testing.assert_allclose(sampled.activity[0], exact.activity[0], atol=0.02)


def test_active_units_refuses_too_little():
  model, params, x = _vae_and_data()
  with pytest.raises(ValueError, match="at least 2"):
    jvae.active_units(model, params, jax.random.key(0), x[:1])
  with pytest.raises(ValueError, match="num_samples"):
    jvae.active_units(model, params, jax.random.key(0), x, num_samples=1)


def _env():
  return {**os.environ, "JVAE_DATA_DIR": os.environ.get("JVAE_DATA_DIR", "")}


def test_cli_lr_stages_and_adam_eps(tmp_path):
  run = tmp_path / "run"
  subprocess.run([sys.executable, "-m", "jvae", "train", "--lr-stages", "1", "1",
                  "--adam-eps", "1e-4", "--out", str(run), "--no-progress", "--eval-samples", "2",
                  "--hidden", "16", "--latent-dim", "2", "--batch-size", "100"],  # a tiny model
                 check=True, capture_output=True, env=_env())
  cfg = json.loads((run / "config.json").read_text())
  assert cfg["lr_stages"] == [1, 1] and cfg["adam_eps"] == 1e-4 and cfg["epochs"] == 2
  bad = subprocess.run([sys.executable, "-m", "jvae", "train", "--lr-stages", "0",
                        "--out", str(tmp_path / "bad")], capture_output=True, text=True,
                       env=_env())
  assert bad.returncode == 2 and "--lr-stages" in bad.stderr
  assert not (tmp_path / "bad").exists()


def test_paper_driver_runs_resumes_and_skips(tmp_path, monkeypatch):
  """A smoke-budget row on digits: trained, evaluated, recorded; a rerun redoes nothing."""
  from benchmarks import paper

  runs, out = tmp_path / "runs", tmp_path / "rec.json"
  argv = ["--data", "digits", "--budget", "smoke", "--rows", "vae-k1-1l-static",
          "--eval-samples", "4", "--test-limit", "40", "--runs", str(runs), "--out", str(out),
          "--no-progress"]
  assert paper.main(argv) == 0
  rec = json.loads(out.read_text())
  (row,) = rec["rows"]
  assert row["passes"] == 8 and row["budget"] == "smoke" and row["paper_passes"] == 3280
  assert row["test_images"] == 40 and row["eval_samples"] == 4 and row["published"] == 88.71
  assert np.isfinite(row["test_nll"]) and row["stderr_over_images"] > 0
  assert 0 <= row["active_units"] <= 50 and row["train_sessions"] == 1
  train_cfg = json.loads((runs / "vae-k1-1l-static" / "train" / "config.json").read_text())
  assert train_cfg["lr_stages"] == [1] * 8 and train_cfg["batch_size"] == 20
  assert train_cfg["adam_eps"] == 1e-4
  calls = []
  monkeypatch.setattr(paper, "_jvae", lambda *a, **k: calls.append(a))
  assert paper.main(argv) == 0
  assert calls == []  # trained, evaluated and counted: nothing is run again
  assert json.loads(out.read_text())["rows"][0]["test_nll"] == row["test_nll"]


def test_paper_driver_skips_dynamic_rows_without_mnist(tmp_path, monkeypatch):
  from benchmarks import paper

  monkeypatch.setenv("JVAE_DATA_DIR", str(tmp_path / "empty"))
  monkeypatch.setattr(paper, "_jvae", lambda *a, **k: pytest.fail("nothing may be trained"))
  out = tmp_path / "rec.json"
  assert paper.main(["--budget", "smoke", "--rows", "iwae-k50-2l-dynamic", "--runs",
                     str(tmp_path / "runs"), "--out", str(out)]) == 0
  (row,) = json.loads(out.read_text())["rows"]
  assert "unavailable" in row["skipped"] and row["published"] == 82.90
