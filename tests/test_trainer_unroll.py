"""``jvae.trainer(..., unroll=U)`` and ``jvae train --unroll U``: U steps per iteration of the
epoch's scan, the same steps in the same order, so the same result as U = 1 up to float32
rounding (XLA may fuse the unrolled body's elementwise work differently): keys, step and skip
counts exactly, params, moments and metrics within RTOL/ATOL after 10 Adam steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jvae

BATCH, EVENT, LATENT = 10, 12, 3
NUM_BATCHES = 5  # not a multiple of 2 or 3: the scan's remainder steps are checked too
RTOL, ATOL = 1e-5, 1e-6  # float32 rounding over 10 steps (seen: ≤ 4e-9 absolute, 7e-8 relative)


def _setup(*, unroll, sub_batches=1):
  model = jvae.mlp_vae(event_shape=(EVENT,), latent_dim=LATENT, hidden=(16,))
  tr = jvae.trainer(jvae.elbo(model), optax.adam(1e-2), batch_size=BATCH,
                    sub_batches=sub_batches, unroll=unroll)
  x = (jax.random.uniform(jax.random.key(0), (BATCH * NUM_BATCHES, EVENT)) < 0.4)
  params = model.init(jax.random.key(1), x[:BATCH].astype(jnp.float32))
  return tr, tr.init(params, jax.random.key(2)), x.astype(jnp.float32)


def _arrays(tree):
  return [np.asarray(jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key)
                     else a) for a in jax.tree_util.tree_leaves(tree)]


def _assert_same(a, b):
  """Integer leaves (keys, counts) equal, float leaves within float32 rounding."""
  for u, v in zip(_arrays(a), _arrays(b), strict=True):
    assert u.dtype == v.dtype and u.shape == v.shape
    if np.issubdtype(u.dtype, np.floating):
      np.testing.assert_allclose(u, v, rtol=RTOL, atol=ATOL)
    else:
      np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("unroll, sub_batches, jit", [(2, 1, False), (3, 1, True), (2, 2, True)])
def test_an_unrolled_epoch_is_the_plain_epoch(unroll, sub_batches, jit):
  """Two epochs with U steps per scan iteration: params, Adam moments, keys, step counts and
  metrics equal U = 1's, and the params moved (the epoch trained)."""
  wrap = jax.jit if jit else (lambda f: f)
  plain, s, x = _setup(unroll=1, sub_batches=sub_batches)
  unrolled, _, _ = _setup(unroll=unroll, sub_batches=sub_batches)
  a = b = s
  for _ in range(2):
    a, ma = wrap(plain.epoch)(a, x)
    b, mb = wrap(unrolled.epoch)(b, x)
  _assert_same(a, b)
  _assert_same(ma, mb)
  assert int(b.step) == 2 * NUM_BATCHES
  moved = [float(jnp.max(jnp.abs(u - v))) for u, v in
           zip(jax.tree_util.tree_leaves(b.params), jax.tree_util.tree_leaves(s.params),
               strict=True)]
  assert min(moved) > 0.0


def test_an_unrolled_epoch_skips_a_nonfinite_step_alike():
  """A NaN in the third batch's rows: that step is skipped under either U, and the rest agree."""
  plain, s, x = _setup(unroll=1)
  unrolled, _, _ = _setup(unroll=2)
  # One row with a NaN lands in exactly one step of the shuffled epoch, whichever it is.
  x = x.at[7, 0].set(jnp.nan)
  a, ma = jax.jit(plain.epoch)(s, x)
  b, mb = jax.jit(unrolled.epoch)(s, x)
  assert int(ma["nonfinite"]) == int(mb["nonfinite"]) == 1
  _assert_same(a, b)
  _assert_same(ma, mb)


def test_unrolled_vmapped_and_interleaved_epochs_are_the_plain_ones():
  """Seeds as a vmap axis (the vmapped guard) and as interleaved states, U = 2 against U = 1."""
  plain, s, x = _setup(unroll=1)
  unrolled, _, _ = _setup(unroll=2)
  keys = jax.random.split(jax.random.key(3), 2)
  states = jax.vmap(lambda k: s._replace(key=k))(keys)
  _assert_same(jax.jit(jax.vmap(plain.epoch, (0, None)))(states, x),
               jax.jit(jax.vmap(unrolled.epoch, (0, None)))(states, x))
  pair = tuple(s._replace(key=k) for k in keys)
  _assert_same(jax.jit(plain.interleaved_epoch)(pair, x),
               jax.jit(unrolled.interleaved_epoch)(pair, x))


@pytest.mark.parametrize("unroll", [0, -1, 1.5, True, "2", None])
def test_invalid_unroll_is_refused(unroll):
  with pytest.raises(ValueError, match=r"unroll must be an integer >= 1 .*got"):
    jvae.trainer(lambda p, k, x, beta=1.0: x.sum(-1), optax.sgd(1.0), batch_size=BATCH,
                 unroll=unroll)


def test_cli_unroll_reaches_the_trainer_and_may_change_on_resume(capsys):
  """``jvae train --unroll 2`` builds an unrolled trainer; an old config reads as 1; resuming with
  another --unroll is allowed (same result) and applied; --unroll 0 is a usage error."""
  from jvae.cli import args as cli_args
  from jvae.cli import build, rundir
  from jvae.cli import main as cli_main
  from jvae.cli import run as r

  tiny = ["--hidden", "16", "--latent-dim", "2", "--epochs", "1", "--no-progress"]
  parse = cli_args.build_parser().parse_args
  cfg = r._config_from_args(parse(["train", *tiny, "--unroll", "2"]))
  assert cfg["unroll"] == 2 and "unroll" in r.CONFIG_KEYS
  old = {k: v for k, v in cfg.items() if k != "unroll"}
  assert build.complete_config(old, r.CONFIG_KEYS)["unroll"] == 1
  args = parse(["train", "--resume", "somewhere", "--unroll", "4"])
  resumed = rundir.resumed_config(cfg, args, {"resume", "unroll"}, r.CONFIG_KEYS)
  assert resumed["unroll"] == 4 and resumed["hidden"] == cfg["hidden"]

  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    cli_main(["train", *tiny, "--unroll", "0"])
  assert exit_info.value.code == 2
  assert "--unroll" in capsys.readouterr().err
