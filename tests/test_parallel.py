"""Devices as an axis: data- and seed-parallel training on 4 CPU devices match one device.

The multi-device runs happen in a subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (the flag must be set before JAX starts).
"""

import json
import os
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
    epoch_fn = jax.jit(jvae.make_epoch_fn(tr, jvae.elbo(model), patience=None, seed_chunk=None))
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


def _run(mode, devices):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", SCRIPT, mode, str(devices)], env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def single():
  return _run("data", 0)


@pytest.mark.parametrize("mode", ["data", "seeds"])
def test_multi_device_matches_single_device(single, mode):
  multi = _run(mode, 4)
  assert multi["n_devices"] == 4
  assert multi["shard_devices"] == 4  # really spread over the mesh
  # The all-reduce set pins HLO structure because it is the contract of each mode: data
  # parallelism reduces the gradients of the batch shards across devices (XLA inserts it); seed
  # parallelism must reduce one scalar flag (is every seed finite, jvae/training/steps.py) and
  # never an array, or the seeds would not be independent programs.
  if mode == "data":
    assert any(r.startswith("f32[") and r != "f32[]" for r in multi["all_reduce"])
  else:
    assert multi["all_reduce"] and set(multi["all_reduce"]) <= {"pred[]"}
  # Data parallelism changes the order of the gradient reduction, so float32 round-off differs;
  # seed parallelism computes each seed on one device. 3 epochs of Adam amplify ulps only a bit.
  tol = 1e-4 if mode == "data" else 1e-6
  for a, b in zip(single["leaves"], multi["leaves"], strict=True):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=tol, atol=tol)
  np.testing.assert_allclose(multi["valid"], single["valid"], rtol=tol)
