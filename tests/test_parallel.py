"""Devices as an axis: data- and seed-parallel training on 4 and 2 CPU devices match one device.

The multi-device runs happen in a subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (the flag must be set before JAX starts).
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent("""
    import json, re, sys
    import jax, jax.numpy as jnp, numpy as np, optax
    import jvae
    from jvae.training import parallel as _parallel

    mode, devices = sys.argv[1], int(sys.argv[2])
    chunk = None if sys.argv[3] == "none" else int(sys.argv[3])
    x = (jax.random.uniform(jax.random.key(0), (240, 16)) < 0.3).astype(jnp.float32)
    model = jvae.mlp_vae(event_shape=(16,), latent_dim=2, hidden=(8,))
    num_seeds = 4
    mesh = _parallel.make_mesh(devices, "data" if mode == "data" else "seeds") if devices else None
    sharding = _parallel.batch_sharding(mesh) if mesh is not None and mode == "data" else None
    tr = jvae.trainer(jvae.elbo(model), optax.adam(3e-3), batch_size=40, batch_sharding=sharding)
    state = jvae.fit_init(model, tr, jvae.seed_keys(0, num_seeds), x[:2])
    train, valid = x[:200], x[200:]
    if mesh is not None:
      state = _parallel.place_fit_state(state, mesh, mode)
      train = jax.device_put(train, _parallel.replicated(mesh))
      valid = jax.device_put(valid, _parallel.replicated(mesh))
    seed_mesh = mesh if mode == "seeds" else None
    epoch_fn = jax.jit(jvae.make_epoch_fn(tr, jvae.elbo(model), patience=None,
                                          seed_chunk=chunk, mesh=seed_mesh))
    hlo = epoch_fn.lower(state, train, valid).compile().as_text()
    state, hist = jvae.fit(tr, state, train, valid, epochs=3, valid_bound=jvae.elbo(model),
                           epoch_fn=epoch_fn)
    leaves = [np.asarray(a).ravel().tolist() for a in jax.tree_util.tree_leaves(state.best_params)]
    shard_devices = len(state.train.params["params"]["decoder"]["head"]["logits"]["bias"]
                        .sharding.device_set)
    reduced = set()  # dtype[shape] of every array an all-reduce carries
    for line in hlo.splitlines():
      if re.search(r" all-reduce(-start)?\\(", line):
        reduced |= {f"{t}[{d}]" for t, d in re.findall(r"(\\w+)\\[([\\d,]*)\\]",
                                                        line.split(" all-reduce")[0])}
    print(json.dumps({"n_devices": len(jax.devices()), "leaves": leaves,
                      "valid": hist[-1]["valid_bound"].tolist(), "shard_devices": shard_devices,
                      "all_reduce": sorted(reduced)}))
""")


def _run(mode, devices, chunk=None):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", SCRIPT, mode, str(devices),
                        "none" if chunk is None else str(chunk)], env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def single():
  return _run("data", 0)


@pytest.mark.parametrize("mode,chunk", [("data", None), ("seeds", 1)])
def test_multi_device_matches_single_device(single, mode, chunk):
  multi = _run(mode, 4 if mode == "data" else 2, chunk)
  assert multi["n_devices"] == 4
  assert multi["shard_devices"] == (4 if mode == "data" else 2)  # really spread over the mesh
  # The all-reduce set pins HLO structure because it is the contract of each mode: data
  # parallelism reduces the gradients of the batch shards across devices (XLA inserts it); seed
  # parallelism trains each device's seeds as its own program (shard_map): nothing crosses
  # devices, so no all-reduce at all.
  if mode == "data":
    assert any(r.startswith("f32[") and r != "f32[]" for r in multi["all_reduce"])
  else:
    assert multi["all_reduce"] == []
  # Data parallelism changes the order of the gradient reduction, so float32 round-off differs;
  # seed parallelism computes each seed on one device (here the plain program, the CPU's
  # default; the vmapped chunks are tested on one device in test_training.py). 3 epochs of Adam
  # amplify ulps only a bit.
  tol = 1e-4 if mode == "data" else 1e-6
  for a, b in zip(single["leaves"], multi["leaves"], strict=True):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=tol, atol=tol)
  np.testing.assert_allclose(multi["valid"], single["valid"], rtol=tol)


CLI_SCRIPT = textwrap.dedent("""
    import json, sys
    import jvae  # must not start JAX: the CLI then chooses the number of CPU devices
    from jvae.cli.main import main

    rc = main(["train", "--seeds", "2", "--devices", "2", "--parallel", "seeds", "--epochs", "2",
               "--hidden", "16", "--latent-dim", "2", "--batch-size", "100", "--no-progress",
               "--eval-samples", "5", "--out", sys.argv[1]])
    import jax
    print(json.dumps({"rc": rc, "n_devices": len(jax.devices())}))
""")


RESUME_SCRIPT = textwrap.dedent("""
    import json, sys
    from jvae.cli.main import main

    rc = main(["train", "--resume", sys.argv[1], "--epochs", "3", "--devices", sys.argv[2],
               "--no-progress"])
    import jax
    print(json.dumps({"rc": rc, "n_devices": len(jax.devices())}))
""")


def _cli_env():
  """The environment of a CLI subprocess that chooses its number of CPU devices itself."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if "host_platform_device_count" not in f)
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _cli(script, *args):
  out = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=_cli_env(),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_cli_splits_seeds_over_the_cpu_cores_without_environment_flags(tmp_path):
  """``jvae train --devices 2 --parallel seeds`` on a CPU gets its 2 devices by itself and trains
  (the CPU's default chunk of 1 per device; equality with one device is the test above). Then
  the run goes on for an epoch on one device and, from the same checkpoint, on two: the same
  seeds' results (a run may move to a machine with other devices)."""
  run = tmp_path / "split"
  out = subprocess.run([sys.executable, "-c", CLI_SCRIPT, str(run)], env=_cli_env(),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads(out.stdout.strip().splitlines()[-1]) == {"rc": 0, "n_devices": 2}
  rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert [(r["epoch"], r["seed_index"]) for r in rows] == [(e, s) for e in (1, 2) for s in (0, 1)]
  assert all(np.isfinite(r["train_bound"]) and np.isfinite(r["valid_bound"]) for r in rows)
  assert rows[-1]["train_bound"] != rows[-2]["train_bound"]  # two distinct seeds
  assert len(json.loads((run / "summary.json").read_text())["per_seed"]["iwae_5"]) == 2

  ends = {}
  for devices in (1, 2):
    moved = tmp_path / f"on{devices}"
    shutil.copytree(run, moved)
    assert _cli(RESUME_SCRIPT, moved, devices) == {"rc": 0, "n_devices": devices}
    assert json.loads((moved / "config.json").read_text())["devices"] == devices
    rows = [json.loads(line) for line in (moved / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["seed_index"]) for r in rows][-2:] == [(3, 0), (3, 1)]
    ends[devices] = [(r["train_bound"], r["valid_bound"]) for r in rows[-2:]]
  np.testing.assert_allclose(ends[1], ends[2], rtol=1e-6)


FINAL_TEST_SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec
    import jvae
    from jvae.cli import run as r
    from jvae.training import parallel as _parallel

    model = jvae.mlp_vae(event_shape=(16,), latent_dim=2, hidden=(8,))
    x = (jax.random.uniform(jax.random.key(0), (150, 16)) < 0.3).astype(jnp.float32)
    params = jax.vmap(lambda k: model.init(k, x[:2]))(jax.random.split(jax.random.key(1), 4))
    keys = jax.random.split(jax.random.key(2), 4)
    bound = jvae.log_marginal(model, num_samples=3 * r.TEST_CHUNK, chunk_size=r.TEST_CHUNK)
    one = lambda p, k: jvae.evaluate(bound, p, k, x, batch_size=r.TEST_BATCH)
    mesh = _parallel.make_mesh(2, "seeds")
    split = NamedSharding(mesh, PartitionSpec("seeds"))
    program = r._per_seed_program(one, mesh)
    placed = jax.device_put((params, keys), split)
    hlo = program.lower(*placed).compile().as_text()
    sharded, plain = program(*placed), r._per_seed_program(one)(params, keys)
    print(json.dumps({"gathers": hlo.count("all-gather"),
                      "devices": len(sharded.sharding.device_set),
                      "max_diff": float(np.max(np.abs(np.asarray(sharded) - np.asarray(plain))))}))
""")


def test_the_final_test_of_seeds_split_over_devices_stays_on_their_devices():
  """``jvae train --parallel seeds``: each device tests its own seeds (no parameters gathered
  across devices), with the values of the same test on one device."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", FINAL_TEST_SCRIPT], env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  got = json.loads(out.stdout.strip().splitlines()[-1])
  assert got["gathers"] == 0 and got["devices"] == 2
  assert got["max_diff"] < 1e-4
