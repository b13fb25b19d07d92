"""Training functions: trainer init/step/epoch, non-finite skipping, evaluate, multi-seed fit.

Everything runs on a tiny 16-8-2 MLP VAE or on hand-made quadratic objectives whose trajectories
are known in closed form. Compilation dominates the run time, so the VAE runs share one trainer,
one jitted epoch function and cached fits (``_init3``, ``_multi_run``, ``_single_run``).
"""

import functools
import itertools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jvae

EVENT, N_TRAIN, N_VALID, BATCH, EPOCHS = 16, 64, 24, 16, 4


def _binary(n, seed):
  return jax.random.bernoulli(jax.random.key(seed), 0.4, (n, EVENT)).astype(jnp.float32)


@functools.cache
def _setup():
  """Model, data, trainer (adam 1e-2, batch 16) and its jitted step and multi-seed epoch fns."""
  model = jvae.mlp_vae(event_shape=(EVENT,), latent_dim=2, hidden=(8,))
  tr = jvae.trainer(jvae.elbo(model), optax.adam(1e-2), batch_size=BATCH)
  epoch_fn = jax.jit(jvae.make_epoch_fn(tr, jvae.elbo(model), patience=None))
  return model, _binary(N_TRAIN, 100), _binary(N_VALID, 101), tr, jax.jit(tr.step), epoch_fn


@pytest.fixture(scope="module")
def model():
  return _setup()[0]


@pytest.fixture(scope="module")
def data():
  return _setup()[1:3]


def _leaves(tree):
  return [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]


def _key_data(key):
  return np.asarray(jax.random.key_data(key))


def _assert_trees_equal(a, b):
  """Bitwise equality (NaN == NaN) of two pytrees with the same structure."""
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def _seed(tree, i):
  """Seed i of a stacked pytree (leading seed axis)."""
  return jax.tree_util.tree_map(lambda a: a[i], tree)


def _train_state_equal(a, b):
  """Bitwise comparison of two (unstacked) TrainStates, keys included."""
  _assert_trees_equal((a.params, a.opt_state, a.step, a.nonfinite),
                      (b.params, b.opt_state, b.step, b.nonfinite))
  np.testing.assert_array_equal(_key_data(a.key), _key_data(b.key))


# ------------------------------------------------------------------------------------------------
# trainer: init / step / epoch
# ------------------------------------------------------------------------------------------------


def test_init_state():
  tr = _setup()[3]
  params = _params0()
  st = tr.init(params, jax.random.key(1))
  assert isinstance(st, jvae.TrainState)
  assert st.step.dtype == jnp.int32 and int(st.step) == 0
  assert st.nonfinite.dtype == jnp.int32 and int(st.nonfinite) == 0
  _assert_trees_equal(st.params, params)
  np.testing.assert_array_equal(_key_data(st.key), _key_data(jax.random.key(1)))
  # adam's moments start at zero
  _assert_trees_equal(st.opt_state, optax.adam(1e-2).init(params))


def _params0():
  """Initial VAE params of seed 0 (taken from the cached fit_init, which saves a compile)."""
  return _seed(_init3().train.params, 0)


def test_step_decreases_loss_on_fixed_batch(model, data):
  x, _ = data
  batch = x[:BATCH]
  tr, step = _setup()[3:5]
  st = tr.init(_params0(), jax.random.key(1))
  losses = []
  for _ in range(60):
    st, m = step(st, batch)
    losses.append(float(m["loss"]))
    assert float(m["finite"]) == 1.0
  assert int(st.step) == 60 and int(st.nonfinite) == 0
  # The ELBO is a 1-sample MC estimate, so compare 10-step averages: the fit must improve clearly.
  first, last = np.mean(losses[:10]), np.mean(losses[-10:])
  assert last < first - 0.5, (first, last)
  # A step is deterministic given the state and the batch.
  st2, m2 = step(st, batch)
  st3, m3 = step(st, batch)
  _train_state_equal(st2, st3)
  assert float(m2["loss"]) == float(m3["loss"])


def _quad(p, k, x, beta=1.0):
  """A deterministic bound -beta * ||x - w||^2 per example."""
  return -beta * jnp.sum((x - p["w"]) ** 2, -1)


def test_warmup_beta_schedule():
  """β(t) = beta · min(1, t / warmup_steps) is passed to the objective and reported per step."""
  tr = jvae.trainer(_quad, optax.sgd(0.0), batch_size=2, warmup_steps=4, beta=2.0)
  st = tr.init({"w": jnp.zeros(1)}, jax.random.key(1))
  step = jax.jit(tr.step)
  x = jnp.full((2, 1), 3.0)  # ||x - w||^2 = 9
  betas, losses = [], []
  for _ in range(6):
    st, m = step(st, x)
    betas.append(float(m["beta"]))
    losses.append(float(m["loss"]))
  want = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.0])
  np.testing.assert_allclose(betas, want, rtol=0, atol=1e-7)
  np.testing.assert_allclose(losses, 9.0 * want, rtol=1e-6, atol=1e-6)


def _noisy_quad(p, k, x, beta=1.0):
  """-||x - w - 0.3 ε||^2 with ε ~ N(0, I) from the step's key: a cheap stochastic objective."""
  eps = jax.random.normal(k, x.shape)
  return -jnp.sum((x - p["w"] - 0.3 * eps) ** 2, -1)


def test_epoch_equals_manual_steps():
  """epoch = split key, permute, N // batch_size steps on the permuted batches (tail dropped)."""
  n, batch_size = 30, 8  # 3 steps, 6 examples dropped
  x = jax.random.normal(jax.random.key(11), (n, 3)) + jnp.arange(n)[:, None]  # rows distinct
  tr = jvae.trainer(_noisy_quad, optax.adam(0.1), batch_size=batch_size)
  step = jax.jit(tr.step)
  st0 = tr.init({"w": jnp.zeros(3)}, jax.random.key(5))
  # one prior step so that step/opt_state are not at their initial values
  st0, _ = step(st0, x[:batch_size])

  st_epoch, m = jax.jit(tr.epoch)(st0, x)
  assert int(st_epoch.step) == int(st0.step) + n // batch_size
  assert int(m["nonfinite"]) == 0

  key, perm_key = jax.random.split(st0.key)
  perm = np.asarray(jax.random.permutation(perm_key, n))
  assert sorted(perm.tolist()) == list(range(n))  # a permutation of the data
  st = st0._replace(key=key)
  losses = []
  for i in range(n // batch_size):
    st, mi = step(st, x[perm[i * batch_size:(i + 1) * batch_size]])
    losses.append(float(mi["loss"]))

  np.testing.assert_array_equal(_key_data(st_epoch.key), _key_data(st.key))
  assert int(st_epoch.step) == int(st.step)
  _assert_trees_close(st_epoch.params, st.params, rtol=1e-5, atol=1e-6)
  _assert_trees_close(st_epoch.opt_state, st.opt_state, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(m["loss"]), np.mean(losses), rtol=1e-5)
  np.testing.assert_allclose(float(m["bound"]), -np.mean(losses), rtol=1e-5)
  # a different order of the same batches would give different params (the check has teeth)
  st_rev = st0._replace(key=key)
  for i in reversed(range(n // batch_size)):
    st_rev, _ = step(st_rev, x[perm[i * batch_size:(i + 1) * batch_size]])
  assert not np.allclose(np.asarray(st_rev.params["w"]), np.asarray(st.params["w"]), rtol=1e-3)


def test_epoch_visits_each_example_once():
  """With a linear objective, sgd turns the params into a visit count per example."""
  n, batch_size = 12, 4
  data = jnp.eye(n)  # row i is the one-hot e_i

  def objective(p, k, x, beta=1.0):
    return x @ p["w"]  # grad of the loss wrt w = -(sum of the batch's one-hots) / batch

  tr = jvae.trainer(objective, optax.sgd(float(batch_size)), batch_size=batch_size)
  st = tr.init({"w": jnp.zeros(n)}, jax.random.key(3))
  st, _ = jax.jit(tr.epoch)(st, data)
  # sgd with lr=batch_size adds exactly 1 to w[i] for every visit of example i
  np.testing.assert_array_equal(np.asarray(st.params["w"]), np.ones(n))


def test_epoch_batch_too_large_raises(model, data):
  x, _ = data
  tr = jvae.trainer(jvae.elbo(model), optax.adam(1e-2), batch_size=100)
  st = tr.init(_params0(), jax.random.key(1))
  with pytest.raises(ValueError, match=r"100.*64"):
    tr.epoch(st, x)


@pytest.mark.parametrize("batch_size", [0, -3])
def test_nonpositive_batch_size_raises(model, batch_size):
  with pytest.raises(ValueError, match="batch_size"):
    jvae.trainer(jvae.elbo(model), optax.adam(1e-2), batch_size=batch_size)


# ------------------------------------------------------------------------------------------------
# non-finite steps
# ------------------------------------------------------------------------------------------------

MARKER = -7.0


def _poisoned(objective):
  """NaN bound for any batch that contains the marker value, the plain objective otherwise."""

  def f(p, k, x, beta=1.0):
    return jnp.where(jnp.any(x == MARKER), jnp.nan, objective(p, k, x, beta=beta))

  return f


def test_nonfinite_loss_step_is_skipped():
  tr = jvae.trainer(_poisoned(_quad), optax.adam(0.1), batch_size=4)
  step = jax.jit(tr.step)
  x = jax.random.normal(jax.random.key(0), (20, 3))
  st = tr.init({"w": jnp.zeros(3)}, jax.random.key(1))
  for i in range(3):
    st, m = step(st, x[4 * i:4 * (i + 1)])
    assert float(m["finite"]) == 1.0

  bad_batch = x[12:16].at[2, 1].set(MARKER)
  st_bad, m = step(st, bad_batch)
  assert float(m["finite"]) == 0.0
  assert float(m["loss"]) == 0.0
  _assert_trees_equal(st_bad.params, st.params)
  _assert_trees_equal(st_bad.opt_state, st.opt_state)  # adam's count and moments untouched
  assert int(st_bad.step) == int(st.step) + 1
  assert int(st_bad.nonfinite) == int(st.nonfinite) + 1 == 1
  assert not np.array_equal(_key_data(st_bad.key), _key_data(st.key))  # the key still advances

  # finite steps after the skipped one update again, exactly as if the bad batch never came
  st_next, m = step(st_bad, x[16:20])
  assert float(m["finite"]) == 1.0
  assert int(st_next.nonfinite) == 1
  st_ref, m_ref = step(st, x[16:20])
  assert float(m["loss"]) == float(m_ref["loss"])
  _assert_trees_equal(st_next.params, st_ref.params)  # _quad ignores the key
  assert not np.array_equal(np.asarray(st_next.params["w"]), np.asarray(st_bad.params["w"]))


def test_nonfinite_gradient_with_finite_loss_is_skipped():
  """sqrt(w) at w = 0: the loss is finite but d/dw is inf; the step must still be skipped."""

  def objective(p, k, x, beta=1.0):
    return -jnp.sqrt(p["w"]) * jnp.ones(x.shape[0]) + jnp.sum(p["v"] * x, -1)

  tr = jvae.trainer(objective, optax.sgd(0.1), batch_size=4)
  step = jax.jit(tr.step)
  st = tr.init({"w": jnp.zeros(()), "v": jnp.ones(3)}, jax.random.key(0))
  st2, m = step(st, jnp.ones((4, 3)))
  assert float(m["finite"]) == 0.0
  assert int(st2.nonfinite) == 1
  _assert_trees_equal(st2.params, st.params)
  _assert_trees_equal(st2.opt_state, st.opt_state)

  # once w > 0 the same objective trains normally
  st3 = tr.init({"w": jnp.ones(()), "v": jnp.ones(3)}, jax.random.key(0))
  st4, m = step(st3, jnp.ones((4, 3)))
  assert float(m["finite"]) == 1.0 and int(st4.nonfinite) == 0
  np.testing.assert_allclose(float(st4.params["w"]), 1.0 - 0.1 * 0.5, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(st4.params["v"]), 1.1 * np.ones(3), rtol=1e-6)


def test_epoch_counts_and_excludes_nonfinite_steps():
  """Epoch metrics: ``nonfinite`` counts skipped steps, the loss averages finite steps only."""
  n, batch_size, bad_row = 8, 2, 5
  data = (0.5 + jnp.arange(n, dtype=jnp.float32))[:, None].at[bad_row, 0].set(MARKER)
  tr = jvae.trainer(_poisoned(_quad), optax.sgd(0.0), batch_size=batch_size)  # w stays at 0
  st = tr.init({"w": jnp.zeros(1)}, jax.random.key(2))
  st2, m = jax.jit(tr.epoch)(st, data)
  assert int(m["nonfinite"]) == 1 and int(st2.nonfinite) == 1
  assert int(st2.step) == n // batch_size
  # with w = 0 a batch's loss is mean(x^2) over its rows; average the 3 finite batches
  _, perm_key = jax.random.split(st.key)
  perm = np.asarray(jax.random.permutation(perm_key, n)).reshape(-1, batch_size)
  vals = np.asarray(data)[:, 0]
  finite_batches = [b for b in perm if bad_row not in b]
  assert len(finite_batches) == 3
  expected = np.mean([np.mean(vals[b] ** 2) for b in finite_batches])
  np.testing.assert_allclose(float(m["loss"]), expected, rtol=1e-6)
  np.testing.assert_allclose(float(m["bound"]), -expected, rtol=1e-6)


def _manual_epoch(tr, st, data, batch_size):
  """The epoch as its definition: split the key, permute, guarded steps one by one."""
  n = data.shape[0]
  key, perm_key = jax.random.split(st.key)
  perm = np.asarray(jax.random.permutation(perm_key, n))
  st = st._replace(key=key)
  step = jax.jit(tr.step)
  for i in range(n // batch_size):
    st, _ = step(st, data[perm[i * batch_size:(i + 1) * batch_size]])
  return st


def test_epoch_with_a_nonfinite_step_equals_guarded_steps():
  """A non-finite step mid-epoch: the epoch is redone with the guard (no fast-path leftovers).

  Adam with a real learning rate, so that a step taken on the poisoned batch, or moments touched
  by its NaN gradient, would show in the params.
  """
  n, batch_size, bad_row = 24, 4, 9
  data = jax.random.normal(jax.random.key(4), (n, 3)).at[bad_row, 1].set(MARKER)
  tr = jvae.trainer(_poisoned(_noisy_quad), optax.adam(0.1), batch_size=batch_size)
  st0 = tr.init({"w": jnp.ones(3)}, jax.random.key(6))
  st, m = jax.jit(tr.epoch)(st0, data)
  ref = _manual_epoch(tr, st0, data, batch_size)
  assert int(m["nonfinite"]) == int(st.nonfinite) == int(ref.nonfinite) == 1
  assert np.all(np.isfinite(np.asarray(st.params["w"])))
  _assert_trees_close(st.params, ref.params)
  _assert_trees_close(st.opt_state, ref.opt_state)
  # the poisoned step is a real skip: the result differs from the same epoch without that row
  clean = tr.epoch(st0, data.at[bad_row, 1].set(0.0))[0]
  assert int(clean.nonfinite) == 0
  assert not np.allclose(np.asarray(clean.params["w"]), np.asarray(st.params["w"]), rtol=1e-4)


@pytest.mark.parametrize("use_jit", [False, True])
def test_vmapped_epoch_one_seed_nonfinite_others_as_if_alone(use_jit):
  """Seeds vmapped by hand: seed 1 meets a NaN batch mid-epoch, seeds 0 and 2 never do."""
  n, batch_size = 24, 4
  clean = jax.random.normal(jax.random.key(8), (n, 3))
  tr = jvae.trainer(_poisoned(_noisy_quad), optax.adam(0.1), batch_size=batch_size)
  states = [tr.init({"w": jnp.full(3, float(i))}, jax.random.key(20 + i)) for i in range(3)]
  data = jnp.stack([clean, clean.at[5, 0].set(MARKER), clean])
  stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *states)
  epoch = jax.vmap(tr.epoch)
  out, m = (jax.jit(epoch) if use_jit else epoch)(stacked, data)
  np.testing.assert_array_equal(np.asarray(m["nonfinite"]), [0, 1, 0])
  for i in range(3):
    ref = _manual_epoch(tr, states[i], data[i], batch_size)
    _assert_trees_close(_seed(out.params, i), ref.params)
    _assert_trees_close(_seed(out.opt_state, i), ref.opt_state)
    assert int(out.nonfinite[i]) == int(ref.nonfinite)


def test_vmapped_step_one_seed_nonfinite():
  """vmap(step): the NaN seed is left bitwise unchanged, the other takes its solo step."""
  tr = jvae.trainer(_poisoned(_noisy_quad), optax.adam(0.1), batch_size=4)
  states = [tr.init({"w": jnp.full(3, float(i))}, jax.random.key(30 + i)) for i in range(2)]
  x = jax.random.normal(jax.random.key(9), (4, 3))
  xs = jnp.stack([x, x.at[1, 2].set(MARKER)])
  stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *states)
  out, m = jax.jit(jax.vmap(tr.step))(stacked, xs)
  np.testing.assert_array_equal(np.asarray(m["finite"]), [1.0, 0.0])
  solo, _ = jax.jit(tr.step)(states[0], x)
  _assert_trees_close(_seed(out.params, 0), solo.params)
  _assert_trees_close(_seed(out.opt_state, 0), solo.opt_state)
  _assert_trees_equal(_seed(out.params, 1), states[1].params)
  _assert_trees_equal(_seed(out.opt_state, 1), states[1].opt_state)
  np.testing.assert_array_equal(np.asarray(out.nonfinite), [0, 1])


def _eqns(jaxpr, primitive):
  """Every ``primitive`` equation in a jaxpr, sub-jaxprs included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == primitive:
      found.append(eqn)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      found += _eqns(sub, primitive)
  return found


def _conds(jaxpr):
  return _eqns(jaxpr, "cond")


def test_vmapped_step_guard_stays_a_cond_on_one_predicate():
  """Under vmap the guard branches once on 'every seed finite' (a scalar), not per seed.

  And the vmapped epoch runs the unguarded scan first (the fast path in jvae/training/steps.py).

  A per-seed (batched) predicate would turn the cond into a select over params and optimizer
  moments, whose copies cost a large share of a CPU step (benchmarks/seeds.py).
  """
  tr = jvae.trainer(_noisy_quad, optax.adam(0.1), batch_size=4)
  st = tr.init({"w": jnp.zeros(3)}, jax.random.key(0))
  stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a, a]), st)
  x = jnp.ones((2, 4, 3))
  conds = _conds(jax.make_jaxpr(jax.vmap(tr.step))(stacked, x).jaxpr)
  assert conds, "the vmapped step has no cond left"
  assert all(eqn.invars[0].aval.shape == () for eqn in conds)
  vmapped = jax.make_jaxpr(jax.vmap(tr.epoch, in_axes=(0, None)))(stacked, x[0]).jaxpr
  conds = _conds(vmapped)
  assert conds and all(eqn.invars[0].aval.shape == () for eqn in conds)
  # vmapped: an unguarded scan, and the guarded one only behind the cond; plain: the guarded scan
  assert len(_eqns(vmapped, "scan")) == 2
  assert len(_eqns(jax.make_jaxpr(tr.epoch)(st, x[0]).jaxpr, "scan")) == 1


# ------------------------------------------------------------------------------------------------
# evaluate
# ------------------------------------------------------------------------------------------------


def _sum_bound(p, k, x):
  return jnp.sum(x, -1)


@pytest.mark.parametrize("n,batch_size", [(10, 4), (10, 5), (7, 100), (1, 3), (13, 1)])
def test_evaluate_is_the_plain_mean(n, batch_size):
  data = jax.random.normal(jax.random.key(n), (n, 3)) + 2.0  # padding zeros would bias the mean
  got = jvae.evaluate(_sum_bound, None, jax.random.key(0), data, batch_size=batch_size)
  want = np.mean(np.sum(np.asarray(data, np.float64), -1))
  np.testing.assert_allclose(float(got), want, rtol=1e-6)


def test_evaluate_tuple_output_stderr():
  n = 11
  data = jax.random.uniform(jax.random.key(4), (n, 3), minval=0.5, maxval=2.0)

  def bound(p, k, x):
    return jnp.sum(x, -1), x[:, 0] * p["scale"]

  value, se = jvae.evaluate(bound, {"scale": jnp.float32(0.3)}, jax.random.key(0), data,
                            batch_size=4)
  d = np.asarray(data, np.float64)
  np.testing.assert_allclose(float(value), np.mean(d.sum(-1)), rtol=1e-6)
  np.testing.assert_allclose(float(se), np.sqrt(np.sum((0.3 * d[:, 0]) ** 2)) / n, rtol=1e-5)


def test_evaluate_keys_and_jit():
  """Batch i gets fold_in(key, i); evaluate is jittable with the data as a traced argument."""
  n, batch_size = 10, 4
  data = jnp.zeros((n, 2))
  key = jax.random.key(9)

  def noise(p, k, x):
    return jax.random.normal(k, (x.shape[0],))

  got = jax.jit(lambda d: jvae.evaluate(noise, None, key, d, batch_size=batch_size))(data)
  draws = [jax.random.normal(jax.random.fold_in(key, i), (batch_size,)) for i in range(3)]
  want = np.concatenate([np.asarray(d) for d in draws])[:n].mean()
  np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-7)


def test_evaluate_rejects_1d_data():
  with pytest.raises(ValueError, match="shape"):
    jvae.evaluate(_sum_bound, None, jax.random.key(0), jnp.ones(5))


# ------------------------------------------------------------------------------------------------
# multi-seed fit
# ------------------------------------------------------------------------------------------------


def _keep_seeds(fs, idx):
  """The FitState restricted to the seeds ``idx`` (the scalar epoch counter is shared)."""
  idx = jnp.asarray(idx)
  sub = jax.tree_util.tree_map(lambda a: a[idx], fs._replace(epoch=None))
  return sub._replace(epoch=fs.epoch)


@functools.cache
def _init3():
  model, x, _, tr, _, _ = _setup()
  return jvae.fit_init(model, tr, jvae.seed_keys(0, 3), x[:2])


def _fit(fs, epochs, **kw):
  """fit with the shared epoch function; also returns the state after every epoch."""
  _, x, xv, tr, _, epoch_fn = _setup()
  states = []
  fs, hist = jvae.fit(tr, fs, x, xv, epochs=epochs, epoch_fn=epoch_fn,
                      callback=lambda s, r: states.append(s), **kw)
  return fs, hist, states


@functools.cache
def _multi_run():
  return _fit(_init3(), EPOCHS)


@functools.cache
def _single_run(i):
  # seed i alone; test_fit_init_seeds_are_independent shows this equals fit_init(seed_keys(i, 1))
  return _fit(_keep_seeds(_init3(), [i]), EPOCHS)


def test_seed_keys_and_fit_init(model):
  keys = jvae.seed_keys(3, 2)
  assert keys.shape == (2,)
  np.testing.assert_array_equal(_key_data(keys[1]), _key_data(jax.random.key(4)))
  fs = _init3()
  assert int(fs.epoch) == 0 and fs.epoch.shape == ()
  np.testing.assert_array_equal(np.asarray(fs.active), [True] * 3)
  np.testing.assert_array_equal(np.asarray(fs.best_value), [-np.inf] * 3)
  np.testing.assert_array_equal(np.asarray(fs.best_epoch), [0] * 3)
  np.testing.assert_array_equal(np.asarray(fs.train.step), [0] * 3)
  # different seeds, different initial params; best_params start at the initial params
  kernels = [a for a in _leaves(fs.train.params) if a.ndim == 3]
  assert kernels and all(not np.array_equal(k[0], k[1]) for k in kernels)
  _assert_trees_equal(fs.best_params, fs.train.params)
  with pytest.raises(ValueError, match="num_seeds"):
    jvae.fit_init(model, _setup()[3], jax.random.split(jax.random.key(0), (2, 2)),
                  jnp.zeros((2, EVENT)))


def test_fit_init_seeds_are_independent(model, data):
  """Seed i of fit_init(seed_keys(0, 3)) is bitwise fit_init(seed_keys(i, 1))."""
  x, _ = data
  alone = jvae.fit_init(model, _setup()[3], jvae.seed_keys(2, 1), x[:2])
  third = _keep_seeds(_init3(), [2])
  _assert_trees_equal((alone.train.params, alone.train.opt_state, alone.train.step,
                       alone.best_params, alone.best_value, alone.active, alone.epoch),
                      (third.train.params, third.train.opt_state, third.train.step,
                       third.best_params, third.best_value, third.active, third.epoch))
  np.testing.assert_array_equal(_key_data(alone.train.key), _key_data(third.train.key))
  np.testing.assert_array_equal(_key_data(alone.eval_key), _key_data(third.eval_key))


def test_seed_axis_equals_separate_runs():
  fs, hist, _ = _multi_run()
  assert len(hist) == EPOCHS and [r["epoch"] for r in hist] == list(range(1, EPOCHS + 1))
  assert int(fs.epoch) == EPOCHS
  np.testing.assert_array_equal(np.asarray(fs.train.step), [EPOCHS * (N_TRAIN // BATCH)] * 3)
  for i in range(3):
    fs1, hist1, _ = _single_run(i)
    _assert_trees_close(_seed(fs.train.params, i), _seed(fs1.train.params, 0))
    _assert_trees_close(_seed(fs.best_params, i), _seed(fs1.best_params, 0))
    _assert_trees_close(_seed(fs.train.opt_state, i), _seed(fs1.train.opt_state, 0))
    np.testing.assert_array_equal(_key_data(fs.train.key[i]), _key_data(fs1.train.key[0]))
    assert int(fs.best_epoch[i]) == int(fs1.best_epoch[0])
    np.testing.assert_allclose(float(fs.best_value[i]), float(fs1.best_value[0]), rtol=1e-5)
    for r, r1 in zip(hist, hist1, strict=True):
      for name in ("train_bound", "valid_bound", "best_valid_bound"):
        np.testing.assert_allclose(r[name][i], r1[name][0], rtol=1e-5, err_msg=name)
      assert r["nonfinite"][i] == r1["nonfinite"][0] == 0
  # the seeds really differ, and training did something
  assert not np.allclose(hist[-1]["valid_bound"][0], hist[-1]["valid_bound"][1])
  assert np.all(hist[-1]["train_bound"] > hist[0]["train_bound"])


@pytest.mark.parametrize("seed_chunk", [1, 2, None])
def test_seed_chunks_equal_one_vmap(seed_chunk):
  """Seeds trained k at a time (lax.map over vmapped chunks; 3 = 2 + a remainder of 1) or all
  in one vmap: the same params, best params and metrics."""
  model, x, xv, tr, _, _ = _setup()
  epochs = 2
  epoch_fn = jax.jit(jvae.make_epoch_fn(tr, jvae.elbo(model), patience=None,
                                        seed_chunk=seed_chunk))
  fs, hist = jvae.fit(tr, _init3(), x, xv, epochs=epochs, epoch_fn=epoch_fn)
  ref_states = _multi_run()[2]
  ref, ref_hist = ref_states[epochs - 1], _multi_run()[1][:epochs]
  _assert_trees_close(fs.train.params, ref.train.params)
  _assert_trees_close(fs.train.opt_state, ref.train.opt_state)
  _assert_trees_close(fs.best_params, ref.best_params)
  for r, r_ref in zip(hist, ref_hist, strict=True):
    for name in ("train_bound", "valid_bound"):
      np.testing.assert_allclose(r[name], r_ref[name], rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("bad", ["x", 0, -1, 2.0, True])
def test_seed_chunk_rejects_bad_values(bad):
  tr = _setup()[3]
  with pytest.raises(ValueError, match="seed_chunk"):
    jvae.make_epoch_fn(tr, None, patience=None, seed_chunk=bad)


def _fit_five(seed_interleave):
  """5 seeds, 6 epochs, patience 1: the seeds stop at epochs 2 to 6 (see the test below)."""
  model, x, xv, tr, _, _ = _setup()
  fs = jvae.fit_init(model, tr, jvae.seed_keys(0, 5), x[:2])
  return jvae.fit(tr, fs, x, xv, epochs=6, valid_bound=jvae.elbo(model), patience=1,
                  seed_interleave=seed_interleave)


@pytest.mark.xla_defaults  # bitwise across two compiled programs
def test_interleaved_seeds_equal_mapped_seeds():
  """Seeds whose steps share one scan body (lax.map over 2 groups of 2, a remainder of 1) are
  bitwise the lax.map of the plain program, early stopping included: groups with one seed
  stopped (run, its result discarded) and with all stopped (skipped). A remainder group of
  several seeds is the CPU default's 3-seed program of the tests above (4 per group)."""
  ref, ref_hist = _fit_five(1)
  fs, hist = _fit_five(2)
  active_in = np.stack([np.ones(5, bool)] + [r["active"] for r in ref_hist[:-1]])
  assert np.any(active_in.any(1) & ~active_in.all(1))  # some epoch trains a partial group
  assert not active_in[-1, :2].any() and active_in[-1].any()  # seeds 0, 1 stopped, 4 not
  _assert_trees_equal((fs.train.params, fs.train.opt_state, fs.train.step, fs.best_params,
                       fs.best_value, fs.best_epoch, fs.active),
                      (ref.train.params, ref.train.opt_state, ref.train.step, ref.best_params,
                       ref.best_value, ref.best_epoch, ref.active))
  np.testing.assert_array_equal(_key_data(fs.train.key), _key_data(ref.train.key))
  for r, r_ref in zip(hist, ref_hist, strict=True):
    for name in ("train_bound", "valid_bound", "nonfinite", "active", "beta"):
      np.testing.assert_array_equal(r[name], r_ref[name], err_msg=name)


@pytest.mark.xla_defaults  # bitwise across two compiled programs
@pytest.mark.parametrize("jit", [False, True])
def test_interleaved_epoch_is_each_states_epoch(jit):
  """Trainer.interleaved_epoch of two states is each one's epoch, bitwise; a state whose steps
  are all non-finite (NaN params) skips every step without touching the other's."""
  model, x, _, tr, _, _ = _setup()
  a = tr.init(model.init(jax.random.key(1), x[:2]), jax.random.key(2))
  b = tr.init(model.init(jax.random.key(3), x[:2]), jax.random.key(4))
  b = b._replace(params=jax.tree_util.tree_map(lambda p: jnp.full_like(p, jnp.nan), b.params))
  both = jax.jit(tr.interleaved_epoch) if jit else tr.interleaved_epoch
  epoch = jax.jit(tr.epoch) if jit else tr.epoch
  out = both((a, b), x)
  assert len(out) == 2
  for (state, metrics), ref in zip(out, (epoch(a, x), epoch(b, x)), strict=True):
    _assert_trees_equal((state.params, state.opt_state, state.step, state.nonfinite, metrics),
                        (ref[0].params, ref[0].opt_state, ref[0].step, ref[0].nonfinite, ref[1]))
    np.testing.assert_array_equal(_key_data(state.key), _key_data(ref[0].key))
  assert int(out[0][1]["nonfinite"]) == 0 and int(out[1][1]["nonfinite"]) == N_TRAIN // BATCH
  assert not np.allclose(_leaves(out[0][0].params)[0], _leaves(a.params)[0])  # a trained


@pytest.mark.parametrize("bad, match", [
    ("x", "seed_interleave must be"), (0, "seed_interleave must be"),
    (True, "seed_interleave must be"), (1.5, "seed_interleave must be")])
def test_seed_interleave_rejects_bad_values(bad, match):
  with pytest.raises(ValueError, match=match):
    jvae.make_epoch_fn(_setup()[3], None, patience=None, seed_interleave=bad)


def test_seed_interleave_needs_unbatched_seeds_and_a_jvae_trainer():
  tr = _setup()[3]
  with pytest.raises(ValueError, match=r"needs seed_chunk=1 \(got None"):
    jvae.make_epoch_fn(tr, None, patience=None, seed_chunk=None, seed_interleave=2)
  hand = jvae.Trainer(tr.init, tr.step, tr.epoch)  # a Trainer without interleaved_epoch
  with pytest.raises(ValueError, match="interleaved_epoch"):
    jvae.make_epoch_fn(hand, None, patience=None, seed_chunk=1, seed_interleave=2)
  # "auto" falls back to mapping the epoch over the seeds
  model, x = _setup()[:2]
  fs, hist = jvae.fit(hand, jvae.fit_init(model, hand, jvae.seed_keys(0, 2), x[:2]), x, epochs=1)
  assert np.all(np.isfinite(hist[0]["train_bound"])) and np.all(fs.train.step == N_TRAIN // BATCH)


def test_fit_records_and_best_tracking():
  fs, hist, states = _multi_run()
  assert [int(s.epoch) for s in states] == list(range(1, EPOCHS + 1))
  for r in hist:
    assert r["steps_per_s"] == pytest.approx((N_TRAIN // BATCH) / r["seconds"])
    for name in ("train_bound", "valid_bound", "best_valid_bound", "nonfinite", "active"):
      assert r[name].shape == (3,), name
  v = np.stack([r["valid_bound"] for r in hist])  # (epochs, seeds)
  np.testing.assert_array_equal(np.asarray(fs.best_value), v.max(0))
  np.testing.assert_array_equal(np.asarray(fs.best_epoch), v.argmax(0) + 1)
  np.testing.assert_array_equal(np.stack([r["best_valid_bound"] for r in hist]),
                                np.maximum.accumulate(v, axis=0))
  for i in range(3):
    best_state = states[int(fs.best_epoch[i]) - 1]
    _assert_trees_equal(_seed(fs.best_params, i), _seed(best_state.train.params, i))
  with pytest.raises(ValueError, match="epochs"):
    jvae.fit(_setup()[3], fs, _setup()[1], epochs=-1)


# --- per-seed early stopping on a quadratic with a known trajectory -----------------------------
#
# Objective -(x - w)^2 with every x = 1 and sgd(lr): w_{t+1} = w_t + 2 lr (1 - w_t), so w moves
# monotonically towards 1 without crossing it. The validation bound -(w - c)^2 then improves
# every epoch for a seed that moves towards c and worsens for one that moves away from it.

C = 0.0


def _quad_objective(p, k, x, beta=1.0):
  return -jnp.sum((x - p["w"]) ** 2, -1)


def _quad_valid(p, k, x):
  return jnp.full(x.shape[:1], -jnp.sum((p["w"] - C) ** 2))


def _quad_fit_state(tr, w0):
  n = len(w0)
  params = {"w": jnp.asarray(w0, jnp.float32)[:, None]}  # (seeds, 1)
  keys = jax.random.split(jax.random.key(0), n)
  train = jax.vmap(tr.init)(params, keys)
  return jvae.FitState(train, params, jnp.full((n,), -jnp.inf), jnp.zeros((n,), jnp.int32),
                       jnp.zeros((n,), jnp.int32), jnp.ones((n,), bool),
                       jax.random.split(jax.random.key(1), n), jnp.zeros((), jnp.int32))


@functools.cache
def _quad_trainer():
  return jvae.trainer(_quad_objective, optax.sgd(0.05), batch_size=4)


@functools.cache
def _quad_epoch_fn(patience):
  return jax.jit(jvae.make_epoch_fn(_quad_trainer(), _quad_valid, patience=patience))


def test_per_seed_early_stopping():
  tr = _quad_trainer()
  x, xv = jnp.ones((8, 1)), jnp.ones((3, 1))
  # seed 0 moves 0 -> 1, away from C: improves once (from -inf), then worsens -> stops at epoch 2.
  # seed 1 moves 3 -> 1, towards C: improves every epoch.
  fs = _quad_fit_state(tr, [0.0, 3.0])
  states = []
  fs, hist = jvae.fit(tr, fs, x, xv, epochs=6, epoch_fn=_quad_epoch_fn(1),
                      callback=lambda s, r: states.append(s))
  assert len(hist) == 6
  np.testing.assert_array_equal([r["active"].tolist() for r in hist],
                                [[True, True], [False, True]] + [[False, True]] * 4)
  np.testing.assert_array_equal(np.asarray(fs.active), [False, True])
  # seed 0 froze after its (bad) epoch 2: train state bitwise constant from then on
  frozen = _seed(states[1].train, 0)
  for s in states[2:]:
    _train_state_equal(_seed(s.train, 0), frozen)
  assert int(frozen.step) == 2 * 2  # two epochs of 8 // 4 steps
  # seed 1 kept training: its params change every epoch
  w1 = [float(s.train.params["w"][1, 0]) for s in states]
  assert all(b < a for a, b in itertools.pairwise(w1)), w1
  np.testing.assert_array_equal(np.asarray(fs.train.step), [4, 12])
  # seed 0's best is its epoch-1 state; seed 1's best is the last epoch
  w_epoch1 = float(states[0].train.params["w"][0, 0])
  np.testing.assert_allclose(w_epoch1, 1 - (1 - 0.1) ** 2, rtol=1e-6)  # two sgd steps from 0
  assert float(fs.best_params["w"][0, 0]) == w_epoch1
  np.testing.assert_array_equal(np.asarray(fs.best_epoch), [1, 6])
  np.testing.assert_allclose(float(fs.best_value[0]), -(w_epoch1 - C) ** 2, rtol=1e-6)
  _assert_trees_equal(_seed(fs.best_params, 1), _seed(fs.train.params, 1))
  np.testing.assert_allclose(float(fs.best_value[1]), -(w1[-1] - C) ** 2, rtol=1e-6)


def test_fit_stops_when_all_seeds_stopped():
  tr = _quad_trainer()
  x, xv = jnp.ones((8, 1)), jnp.ones((3, 1))
  # both seeds move away from C after their first epoch
  fs = _quad_fit_state(tr, [0.0, 0.5])
  fs, hist = jvae.fit(tr, fs, x, xv, epochs=10, epoch_fn=_quad_epoch_fn(1))
  assert len(hist) == 2 and int(fs.epoch) == 2
  np.testing.assert_array_equal(np.asarray(fs.active), [False, False])
  np.testing.assert_array_equal(np.asarray(fs.best_epoch), [1, 1])
  # patience=2 tolerates one bad epoch: stops after epoch 3
  fs = _quad_fit_state(tr, [0.0, 0.5])
  fs, hist = jvae.fit(tr, fs, x, xv, epochs=10, epoch_fn=_quad_epoch_fn(2))
  assert len(hist) == 3
  # resuming a fully stopped state does nothing
  fs2, hist2 = jvae.fit(tr, fs, x, xv, epochs=10, epoch_fn=_quad_epoch_fn(2))
  assert hist2 == [] and fs2 is fs


def test_make_epoch_fn_inactive_seed_is_frozen():
  """A seed marked inactive by hand is untouched by an epoch, bookkeeping included."""
  tr = _quad_trainer()
  x, xv = jnp.ones((8, 1)), jnp.ones((3, 1))
  fs = _quad_fit_state(tr, [3.0, 3.0])._replace(active=jnp.array([True, False]))
  fs2, _ = _quad_epoch_fn(1)(fs, x, xv)
  _train_state_equal(_seed(fs2.train, 1), _seed(fs.train, 1))
  assert float(fs2.best_value[1]) == -np.inf and int(fs2.best_epoch[1]) == 0
  assert int(fs2.bad_epochs[1]) == 0 and not bool(fs2.active[1])
  assert int(fs2.train.step[0]) == 2 and int(fs2.best_epoch[0]) == 1 and bool(fs2.active[0])
  assert int(fs2.epoch) == 1


def test_fit_without_validation_tracks_last_params():
  tr = _quad_trainer()
  fs = _quad_fit_state(tr, [0.0, 3.0])
  fs, hist = jvae.fit(tr, fs, jnp.ones((8, 1)), epochs=2)  # default (freshly jitted) epoch fn
  assert len(hist) == 2 and "valid_bound" not in hist[0]
  np.testing.assert_array_equal(hist[-1]["nonfinite"], [0, 0])
  _assert_trees_equal(fs.best_params, fs.train.params)
  np.testing.assert_array_equal(np.asarray(fs.best_epoch), [2, 2])
  # 4 sgd steps: w_4 = 1 - (1 - w_0) 0.9^4
  np.testing.assert_allclose(np.asarray(fs.train.params["w"])[:, 0],
                             1 - (1 - np.array([0.0, 3.0])) * 0.9**4, rtol=1e-6)


def test_per_seed_nonfinite_isolated():
  """A seed with a NaN parameter skips every step; the other seeds train as if alone."""
  epochs, bad_seed = 2, 1
  fs = _init3()
  kernel = next(p for p, a in jax.tree_util.tree_leaves_with_path(fs.train.params) if a.ndim == 3)
  poison = lambda path, a: a.at[bad_seed, 0, 0].set(jnp.nan) if path == kernel else a
  params = jax.tree_util.tree_map_with_path(poison, fs.train.params)
  fs = fs._replace(train=fs.train._replace(params=params), best_params=params)
  bad_before = _seed(fs.train, bad_seed)
  fs, hist, _ = _fit(fs, epochs)

  steps = N_TRAIN // BATCH
  for r in hist:
    np.testing.assert_array_equal(r["nonfinite"], [0, steps, 0])
    assert np.all(np.isfinite(r["train_bound"]))
    assert r["train_bound"][bad_seed] == 0.0  # no finite step: 0 / max(#finite, 1)
    assert np.isnan(r["valid_bound"][bad_seed])
    assert np.all(np.isfinite(np.delete(r["valid_bound"], bad_seed)))
  bad = _seed(fs.train, bad_seed)
  _assert_trees_equal(bad.params, bad_before.params)
  _assert_trees_equal(bad.opt_state, bad_before.opt_state)
  assert int(bad.nonfinite) == epochs * steps and int(bad.step) == epochs * steps
  assert int(fs.best_epoch[bad_seed]) == 0 and float(fs.best_value[bad_seed]) == -np.inf
  assert bool(fs.active[bad_seed])  # patience=None: a NaN validation never stops a seed

  for i in (0, 2):
    ref = _single_run(i)[2][epochs - 1]  # seed i alone, after the same number of epochs
    _assert_trees_close(_seed(fs.train.params, i), _seed(ref.train.params, 0))
    _assert_trees_close(_seed(fs.best_params, i), _seed(ref.best_params, 0))
    assert int(fs.train.nonfinite[i]) == 0 and int(fs.best_epoch[i]) == int(ref.best_epoch[0])


# ------------------------------------------------------------------------------------------------
# resume
# ------------------------------------------------------------------------------------------------


def test_resume_equals_straight_run():
  straight, hist, _ = _multi_run()
  half, hist_a, _ = _fit(_init3(), 2)
  assert int(half.epoch) == 2 and len(hist_a) == 2
  resumed, hist_b, _ = _fit(half, EPOCHS)
  assert [r["epoch"] for r in hist_b] == [3, 4]
  _assert_trees_equal(resumed.train.params, straight.train.params)
  _assert_trees_equal(resumed.train.opt_state, straight.train.opt_state)
  _assert_trees_equal(resumed.best_params, straight.best_params)
  _assert_trees_equal((resumed.best_epoch, resumed.best_value, resumed.train.step),
                      (straight.best_epoch, straight.best_value, straight.train.step))
  np.testing.assert_array_equal(_key_data(resumed.train.key), _key_data(straight.train.key))
  for r, r1 in zip(hist_a + hist_b, hist, strict=True):
    np.testing.assert_array_equal(r["valid_bound"], r1["valid_bound"])
    np.testing.assert_array_equal(r["train_bound"], r1["train_bound"])


# ------------------------------------------------------------------------------------------------
# summarize
# ------------------------------------------------------------------------------------------------


def test_summarize_three_values():
  s = jvae.summarize([1.0, 2.0, 3.0])
  t = 4.302652729911275  # Student-t 0.975 quantile, 2 degrees of freedom
  assert s["n"] == 3
  np.testing.assert_allclose(s["mean"], 2.0, rtol=1e-12)
  np.testing.assert_allclose(s["std"], 1.0, rtol=1e-12)
  np.testing.assert_allclose(s["ci_low"], 2.0 - t / np.sqrt(3), rtol=1e-9)
  np.testing.assert_allclose(s["ci_high"], 2.0 + t / np.sqrt(3), rtol=1e-9)


def test_summarize_confidence_and_array_input():
  s = jvae.summarize(np.array([[1.0], [2.0], [3.0]], np.float32), confidence=0.9)
  t = 2.919985580355516  # 0.95 quantile, 2 dof
  np.testing.assert_allclose(s["ci_high"] - s["mean"], t / np.sqrt(3), rtol=1e-9)
  assert s["confidence"] == 0.9


def test_summarize_single_value_is_degenerate():
  s = jvae.summarize([1.5])
  assert s["n"] == 1 and s["mean"] == 1.5 and s["std"] == 0.0
  assert s["ci_low"] == s["ci_high"] == 1.5
