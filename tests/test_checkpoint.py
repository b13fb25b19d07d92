"""Tests for jvae.checkpoint: bitwise round trips, pruning and fallback past broken checkpoints."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jvae import checkpoint


def _train_state(seed: int, key_impl: str | None = None) -> dict:
  """A state shaped like a real one: params, an Adam state after one update, a step and keys."""
  k_kernel, k_bias = jax.random.split(jax.random.key(seed))
  params = {"dense": {"kernel": jax.random.normal(k_kernel, (3, 4)),
                      "bias": jax.random.normal(k_bias, (4,))}}
  opt = optax.adam(1e-3)
  opt_state = opt.init(params)
  _, opt_state = opt.update(params, opt_state, params)
  # Values whose bits a lossy round trip would change.
  params["dense"]["bias"] = jnp.array([-0.0, jnp.nan, jnp.inf, 1e-45], jnp.float32)
  return {"params": params, "opt_state": opt_state, "step": jnp.int32(seed),
          "key": jax.random.key(seed, impl=key_impl),
          "keys": jax.random.split(jax.random.key(seed + 1, impl=key_impl), 4)}


def _raw(x) -> tuple:
  """dtype and exact bytes of a leaf (key data for typed keys)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    return str(jax.random.key_impl(x)), _raw(jax.random.key_data(x))
  return x.dtype, x.shape, np.asarray(x).tobytes()


def _assert_same(actual, expected) -> None:
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
    assert isinstance(a, jax.Array)
    assert a.devices() == {jax.devices()[0]}
    assert _raw(a) == _raw(e)


def _data_file(ckpt):
  """The largest file orbax wrote into checkpoint folder ``ckpt``."""
  files = [f for f in ckpt.rglob("*") if f.is_file() and f.name != checkpoint.MANIFEST]
  return max(files, key=lambda f: f.stat().st_size)


@pytest.mark.parametrize("key_impl", [None, "rbg"])
def test_round_trip_is_bitwise(tmp_path, key_impl):
  state = _train_state(1, key_impl)
  path = checkpoint.save(tmp_path, 7, state)
  assert path == tmp_path / "ckpt_00000007"
  step, restored, metadata = checkpoint.restore_latest(tmp_path, _train_state(99, key_impl))
  assert (step, metadata) == (7, {})
  assert isinstance(restored["opt_state"][0], optax.ScaleByAdamState)
  _assert_same(restored, state)


def test_metadata_round_trips(tmp_path):
  metadata = {"epoch": 3, "loss": 1.25, "tags": ["a", "b"], "nested": {"ok": True, "none": None}}
  checkpoint.save(tmp_path, 1, _train_state(1), metadata=metadata)
  assert checkpoint.restore_latest(tmp_path, _train_state(0))[2] == metadata
  with pytest.raises(TypeError):
    checkpoint.save(tmp_path, 2, _train_state(2), metadata={"bad": object()})
  assert checkpoint.all_steps(tmp_path) == [1]


def test_keep_prunes_old_and_restore_picks_newest(tmp_path):
  for step in (1, 2, 3, 4):
    checkpoint.save(tmp_path, step, _train_state(step), metadata={"step": step}, keep=2)
  assert checkpoint.all_steps(tmp_path) == [3, 4]
  assert checkpoint.latest_step(tmp_path) == 4
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_00000003", "ckpt_00000004"]
  step, restored, metadata = checkpoint.restore_latest(tmp_path, _train_state(0))
  assert (step, metadata) == (4, {"step": 4})
  _assert_same(restored, _train_state(4))


def test_save_replaces_same_step(tmp_path):
  checkpoint.save(tmp_path, 5, _train_state(1))
  checkpoint.save(tmp_path, 5, _train_state(2))
  assert checkpoint.all_steps(tmp_path) == [5]
  _assert_same(checkpoint.restore_latest(tmp_path, _train_state(0))[1], _train_state(2))


def test_no_checkpoint_gives_none(tmp_path):
  assert checkpoint.restore_latest(tmp_path / "missing", _train_state(0)) is None
  assert checkpoint.restore_latest(tmp_path, _train_state(0)) is None
  assert checkpoint.all_steps(tmp_path / "missing") == []
  assert checkpoint.latest_step(tmp_path) is None


@pytest.fixture
def two_checkpoints(tmp_path):
  """Checkpoints of steps 1 and 2 in ``tmp_path``; returns (directory, newest checkpoint path)."""
  checkpoint.save(tmp_path, 1, _train_state(1), metadata={"step": 1})
  return tmp_path, checkpoint.save(tmp_path, 2, _train_state(2), metadata={"step": 2})


def _assert_falls_back(directory, bad, match):
  with pytest.warns(checkpoint.CheckpointWarning, match=match) as record:
    step, restored, metadata = checkpoint.restore_latest(directory, _train_state(0))
  assert len(record) == 1 and bad.name in str(record[0].message)
  assert (step, metadata) == (1, {"step": 1})
  _assert_same(restored, _train_state(1))


def test_missing_manifest_is_incomplete(two_checkpoints):
  directory, newest = two_checkpoints
  (newest / checkpoint.MANIFEST).unlink()
  assert checkpoint.all_steps(directory) == [1]
  _assert_falls_back(directory, newest, "incomplete")


def test_newer_checkpoint_without_manifest_is_skipped(two_checkpoints):
  directory, _ = two_checkpoints
  interrupted = directory / "ckpt_00000003"
  interrupted.mkdir()
  (interrupted / "_METADATA").write_text("{")
  (newest := directory / "ckpt_00000002").joinpath(checkpoint.MANIFEST).unlink()
  with pytest.warns(checkpoint.CheckpointWarning) as record:
    step, _, _ = checkpoint.restore_latest(directory, _train_state(0))
  assert step == 1
  assert [interrupted.name in str(r.message) for r in record] == [True, False]
  assert newest.name in str(record[1].message)


def test_orbax_temporary_folder_is_ignored_then_pruned(two_checkpoints):
  directory, _ = two_checkpoints
  leftover = directory / "ckpt_00000000.orbax-checkpoint-tmp-1234"
  leftover.mkdir()
  assert checkpoint.all_steps(directory) == [1, 2]
  checkpoint.save(directory, 3, _train_state(3), keep=2)
  assert not leftover.exists()
  assert checkpoint.all_steps(directory) == [2, 3]


def test_truncated_file_falls_back(two_checkpoints):
  directory, newest = two_checkpoints
  data = _data_file(newest)
  data.write_bytes(data.read_bytes()[:-10])
  _assert_falls_back(directory, newest, f"{data.name} has .* bytes.*truncated")


def test_flipped_bytes_fall_back(two_checkpoints):
  directory, newest = two_checkpoints
  data = _data_file(newest)
  raw = bytearray(data.read_bytes())
  raw[len(raw) // 2] ^= 0xFF
  data.write_bytes(bytes(raw))
  _assert_falls_back(directory, newest, f"{data.name} fails its sha256 check")


def test_missing_file_falls_back(two_checkpoints):
  directory, newest = two_checkpoints
  data = _data_file(newest)
  data.unlink()
  _assert_falls_back(directory, newest, f"missing file .*{data.name}")


def test_broken_manifest_falls_back(two_checkpoints):
  directory, newest = two_checkpoints
  (newest / checkpoint.MANIFEST).write_text('{"step": 2')
  _assert_falls_back(directory, newest, "unreadable")


def test_orbax_failure_with_matching_manifest_falls_back(two_checkpoints):
  directory, newest = two_checkpoints
  (newest / "_METADATA").write_text("not json")
  manifest = json.loads((newest / checkpoint.MANIFEST).read_text())
  (newest / checkpoint.MANIFEST).unlink()
  checkpoint._write_manifest(newest, 2, manifest["metadata"])
  _assert_falls_back(directory, newest, "restore failed: ")
