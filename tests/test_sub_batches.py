"""``jvae.trainer(..., sub_batches=S)`` and ``jvae train --sub-batches S``: each batch's bound as S
independent sub-batches, the same loss and gradient up to the keys they draw with."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jvae

BATCH, EVENT = 8, 6


def _noisy(params, key, batch, beta=1.0):
  """One value per row that depends on the row, the params and the key (a stand-in bound whose
  value for any sub-batch and key is known exactly)."""
  x = batch.x if isinstance(batch, jvae.Batch) else batch
  eps = jax.random.normal(key, (x.shape[0],))
  return -jnp.sum(jnp.square(x - params["w"]), -1) * (1.0 + 0.1 * eps) + beta * params["b"]


def _expected_values(params, key, x, sub_batches):
  m = x.shape[0] // sub_batches
  return jnp.concatenate([_noisy(params, jax.random.fold_in(key, i), x[i * m:(i + 1) * m])
                          for i in range(sub_batches)])


def _params():
  return {"w": jnp.linspace(-1.0, 1.0, EVENT), "b": jnp.asarray(0.5)}


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("sub_batches", [2, 4])
def test_step_is_the_mean_of_independent_sub_batches(jit, sub_batches):
  """loss = −mean(f(params, fold_in(k, i), x_i) for the sub-batches x_i, concatenated in row
  order), and with sgd(1) the new params are params − ∇loss; k is the step's key."""
  x = jax.random.normal(jax.random.key(0), (BATCH, EVENT))
  tr = jvae.trainer(_noisy, optax.sgd(1.0), batch_size=BATCH, sub_batches=sub_batches)
  state = tr.init(_params(), jax.random.key(7))
  step = jax.jit(tr.step) if jit else tr.step
  new, metrics = step(state, x)

  _, step_key = jax.random.split(state.key)
  loss_fn = lambda p: -jnp.mean(_expected_values(p, step_key, x, sub_batches))
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
  for name in ("w", "b"):
    np.testing.assert_allclose(new.params[name], state.params[name] - grads[name],
                               rtol=1e-6, atol=1e-6)
  # the split is real: one batch with the step key draws other noise, so another loss
  unsplit = -jnp.mean(_noisy(state.params, step_key, x))
  assert abs(float(unsplit) - float(loss)) > 1e-3


def test_every_sub_batch_draws_its_own_noise():
  """Row i's value is ε_i a_i (x = I picks a_i), so one sgd(1) step moves a_i by ε_i / batch:
  the halves' ε differ, as they would not if both sub-batches drew with one key."""

  def objective(params, key, x, beta=1.0):
    return jax.random.normal(key, (x.shape[0],)) * (x @ params["a"])

  tr = jvae.trainer(objective, optax.sgd(float(BATCH)), batch_size=BATCH, sub_batches=2)
  state = tr.init({"a": jnp.zeros(BATCH)}, jax.random.key(2))
  new, _ = tr.step(state, jnp.eye(BATCH))
  eps = np.asarray(new.params["a"])
  _, k = jax.random.split(state.key)
  np.testing.assert_allclose(eps[:4], jax.random.normal(jax.random.fold_in(k, 0), (4,)),
                             rtol=1e-6)
  np.testing.assert_allclose(eps[4:], jax.random.normal(jax.random.fold_in(k, 1), (4,)),
                             rtol=1e-6)
  assert np.min(np.abs(eps[:4] - eps[4:])) > 1e-3


def test_epoch_is_the_sub_batched_step_applied_batch_by_batch():
  """The epoch and its steps agree with sub_batches (the scan and the step share the split)."""
  n = 3 * BATCH
  x = jax.random.normal(jax.random.key(3), (n, EVENT)) + jnp.arange(n)[:, None] / n
  tr = jvae.trainer(_noisy, optax.adam(0.1), batch_size=BATCH, sub_batches=2)
  st0 = tr.init(_params(), jax.random.key(4))
  st_epoch, m = jax.jit(tr.epoch)(st0, x)
  key, perm_key = jax.random.split(st0.key)
  perm = np.asarray(jax.random.permutation(perm_key, n))
  st, losses = st0._replace(key=key), []
  step = jax.jit(tr.step)
  for i in range(n // BATCH):
    st, mi = step(st, x[perm[i * BATCH:(i + 1) * BATCH]])
    losses.append(float(mi["loss"]))
  for a, b in zip(jax.tree_util.tree_leaves(st_epoch.params), jax.tree_util.tree_leaves(st.params),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(m["loss"]), np.mean(losses), rtol=1e-5)


def test_a_nonfinite_sub_batch_skips_the_whole_step():
  x = jax.random.normal(jax.random.key(5), (BATCH, EVENT)).at[BATCH - 1, 0].set(jnp.nan)
  tr = jvae.trainer(_noisy, optax.adam(0.1), batch_size=BATCH, sub_batches=2)
  st = tr.init(_params(), jax.random.key(6))
  new, m = jax.jit(tr.step)(st, x)
  assert float(m["finite"]) == 0.0 and int(new.nonfinite) == 1
  for a, b in zip(jax.tree_util.tree_leaves(new.params), jax.tree_util.tree_leaves(st.params),
                  strict=True):
    np.testing.assert_array_equal(a, b)


def test_a_batch_pytree_splits_row_by_row():
  """A jvae.Batch's fields are split alike, so a bound that reads labels sees its own rows."""
  x = jax.random.normal(jax.random.key(8), (BATCH, EVENT))
  y = jnp.arange(BATCH)

  def labelled(params, key, batch, beta=1.0):
    return _noisy(params, key, batch.x) + batch.y.astype(jnp.float32)

  tr = jvae.trainer(labelled, optax.sgd(1.0), batch_size=BATCH, sub_batches=2)
  state = tr.init(_params(), jax.random.key(9))
  _, metrics = tr.step(state, jvae.Batch(x, y=y))
  _, k = jax.random.split(state.key)
  expected = _expected_values(state.params, k, x, 2) + y.astype(jnp.float32)
  np.testing.assert_allclose(metrics["loss"], -jnp.mean(expected), rtol=1e-6)


class _Stateful:
  def __call__(self, params, key, x, beta=1.0):
    return _noisy(params, key, x)

  def with_state(self, params, key, x, state, beta=1.0):
    return _noisy(params, key, x), state

  def init_state(self):
    return jnp.zeros(())


@pytest.mark.parametrize("sub_batches, match", [
    (0, "integer >= 1"), (True, "integer >= 1"), (2.0, "integer >= 1"),
    (3, "must divide batch_size=8")])
def test_invalid_sub_batches_are_refused(sub_batches, match):
  with pytest.raises(ValueError, match=match):
    jvae.trainer(_noisy, optax.sgd(1.0), batch_size=BATCH, sub_batches=sub_batches)


def test_sub_batches_refuse_a_stateful_objective_and_a_sharded_batch():
  with pytest.raises(ValueError, match="stateless objective"):
    jvae.trainer(_Stateful(), optax.sgd(1.0), batch_size=BATCH, sub_batches=2)
  jvae.trainer(_Stateful(), optax.sgd(1.0), batch_size=BATCH)  # S = 1 takes it
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with pytest.raises(ValueError, match="exclude each other"):
    jvae.trainer(_noisy, optax.sgd(1.0), batch_size=BATCH, sub_batches=2,
                 batch_sharding=sharding)


def test_a_step_on_a_batch_that_does_not_split_is_refused():
  tr = jvae.trainer(_noisy, optax.sgd(1.0), batch_size=BATCH, sub_batches=4)
  state = tr.init(_params(), jax.random.key(0))
  with pytest.raises(ValueError, match="6 rows does not split into sub_batches=4"):
    tr.step(state, jnp.zeros((6, EVENT)))


def test_cli_sub_batches_train_record_and_refuse(tmp_path, capsys):
  """``jvae train --sub-batches 2`` builds the sub-batched trainer and records the option in the
  run's config (an old config reads as 1); a value that does not divide the batch is a usage
  error (exit 2) before anything is written."""
  from jvae.cli import args as cli_args
  from jvae.cli import build
  from jvae.cli import main as cli_main
  from jvae.cli import run as r

  tiny = ["--hidden", "16", "--latent-dim", "2", "--epochs", "1", "--no-progress"]
  parse = cli_args.build_parser().parse_args
  cfg = r._config_from_args(parse(["train", *tiny, "--sub-batches", "2"]))
  assert cfg["sub_batches"] == 2 and "sub_batches" in r.CONFIG_KEYS  # config.json has it
  run = r.Run(cfg)
  params = jax.tree_util.tree_map(lambda a: a[0], run.init_state.best_params)
  state = run.trainer.init(params, jax.random.key(0))
  x = jnp.asarray(build.take(run.data.train, slice(0, 100)), jnp.float32)
  _, metrics = jax.jit(run.trainer.step)(state, x)
  _, k = jax.random.split(state.key)
  halves = [run.objective(params, jax.random.fold_in(k, i), x[50 * i:50 * (i + 1)])
            for i in range(2)]
  np.testing.assert_allclose(metrics["loss"], -jnp.mean(jnp.concatenate(halves)), rtol=1e-5)
  old = {k: v for k, v in cfg.items() if k != "sub_batches"}
  assert build.complete_config(old, r.CONFIG_KEYS)["sub_batches"] == 1

  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    cli_main(["train", *tiny, "--sub-batches", "3", "--out", str(tmp_path / "no")])
  assert exit_info.value.code == 2
  assert "--sub-batches 3 must divide --batch-size (100)" in capsys.readouterr().err
  assert not (tmp_path / "no").exists()
