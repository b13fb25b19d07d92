"""Training functions: trainer init/step/epoch, non-finite skipping, evaluate, multi-seed fit.

Everything runs on tiny models (16-8-2 MLP VAE) or on hand-made quadratic objectives whose
trajectories are known in closed form, so the whole file takes seconds on a CPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jvae

EVENT, N_TRAIN, N_VALID = 16, 64, 24


def _tiny_model():
  return jvae.mlp_vae(event_shape=(EVENT,), latent_dim=2, hidden=(8,))


def _binary(n, seed):
  return jax.random.bernoulli(jax.random.key(seed), 0.4, (n, EVENT)).astype(jnp.float32)


@pytest.fixture(scope="module")
def model():
  return _tiny_model()


@pytest.fixture(scope="module")
def data():
  return _binary(N_TRAIN, 100), _binary(N_VALID, 101)


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


def test_init_state(model, data):
  x, _ = data
  tr = jvae.trainer(jvae.elbo(model), optax.adam(1e-2), batch_size=16)
  params = model.init(jax.random.key(0), x[:2])
  st = tr.init(params, jax.random.key(1))
  assert isinstance(st, jvae.TrainState)
  assert st.step.dtype == jnp.int32 and int(st.step) == 0
  assert st.nonfinite.dtype == jnp.int32 and int(st.nonfinite) == 0
  _assert_trees_equal(st.params, params)
  np.testing.assert_array_equal(_key_data(st.key), _key_data(jax.random.key(1)))
  # adam's moments start at zero
  _assert_trees_equal(st.opt_state, optax.adam(1e-2).init(params))


def test_step_decreases_loss_on_fixed_batch(model, data):
  x, _ = data
  batch = x[:16]
  tr = jvae.trainer(jvae.elbo(model), optax.adam(1e-2), batch_size=16)
  st = tr.init(model.init(jax.random.key(0), batch[:2]), jax.random.key(1))
  step = jax.jit(tr.step)
  losses = []
  for _ in range(60):
    st, m = step(st, batch)
    losses.append(float(m["loss"]))
    assert float(m["finite"]) == 1.0
  assert int(st.step) == 60 and int(st.nonfinite) == 0
  # The ELBO is a 1-sample MC estimate, so compare 10-step averages: the fit must improve clearly.
  first, last = np.mean(losses[:10]), np.mean(losses[-10:])
  assert np.all(np.isfinite(losses))
  assert last < first - 0.5, (first, last)
  # A step really is deterministic given the state and the batch.
  st2, m2 = step(st, batch)
  st3, m3 = step(st, batch)
  _train_state_equal(st2, st3)
  assert float(m2["loss"]) == float(m3["loss"])


def test_warmup_beta_schedule(model, data):
  """β(t) = beta · min(1, t / warmup_steps), reported per step; the step counter drives it."""
  x, _ = data
  seen = []

  def objective(p, k, xb, beta=1.0):
    return jvae.elbo(model)(p, k, xb, beta=beta)

  tr = jvae.trainer(objective, optax.sgd(1e-3), batch_size=8, warmup_steps=4, beta=2.0)
  st = tr.init(model.init(jax.random.key(0), x[:2]), jax.random.key(1))
  step = jax.jit(tr.step)
  for _ in range(6):
    st, m = step(st, x[:8])
    seen.append(float(m["beta"]))
  np.testing.assert_allclose(seen, [0.0, 0.5, 1.0, 1.5, 2.0, 2.0], rtol=0, atol=1e-7)


def test_epoch_equals_manual_steps(model, data):
  """epoch = split key, permute, N // batch_size steps on the permuted batches (tail dropped)."""
  x, _ = data
  batch_size = 10  # 64 examples -> 6 steps, 4 examples dropped
  tr = jvae.trainer(jvae.elbo(model), optax.adam(1e-2), batch_size=batch_size)
  st0 = tr.init(model.init(jax.random.key(0), x[:2]), jax.random.key(5))
  # one prior step so that step/opt_state are not at their initial values
  st0, _ = jax.jit(tr.step)(st0, x[:batch_size])

  st_epoch, m = jax.jit(tr.epoch)(st0, x)
  assert int(st_epoch.step) == int(st0.step) + N_TRAIN // batch_size
  assert int(m["nonfinite"]) == 0

  key, perm_key = jax.random.split(st0.key)
  perm = np.asarray(jax.random.permutation(perm_key, N_TRAIN))
  assert sorted(perm.tolist()) == list(range(N_TRAIN))  # a permutation of the data
  st = st0._replace(key=key)
  step = jax.jit(tr.step)
  losses = []
  for i in range(N_TRAIN // batch_size):
    st, mi = step(st, x[perm[i * batch_size:(i + 1) * batch_size]])
    losses.append(float(mi["loss"]))

  np.testing.assert_array_equal(_key_data(st_epoch.key), _key_data(st.key))
  assert int(st_epoch.step) == int(st.step)
  _assert_trees_close(st_epoch.params, st.params, rtol=1e-5, atol=1e-6)
  _assert_trees_close(st_epoch.opt_state, st.opt_state, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(m["loss"]), np.mean(losses), rtol=1e-5)
  np.testing.assert_allclose(float(m["bound"]), -np.mean(losses), rtol=1e-5)


def test_epoch_visits_each_example_at_most_once():
  """With an objective that records nothing but x, params count how often each row was seen."""
  n, batch_size = 12, 4
  data = jnp.eye(n)  # row i is the one-hot e_i

  def objective(p, k, x, beta=1.0):
    return x @ p["w"]  # grad wrt w = sum of the batch's one-hots / batch

  tr = jvae.trainer(objective, optax.sgd(float(batch_size)), batch_size=batch_size)
  st = tr.init({"w": jnp.zeros(n)}, jax.random.key(3))
  st, _ = jax.jit(tr.epoch)(st, data)
  # sgd with lr=batch_size adds exactly 1 to w[i] for every visit of example i
  np.testing.assert_array_equal(np.asarray(st.params["w"]), np.ones(n))


def test_epoch_batch_too_large_raises(model, data):
  x, _ = data
  tr = jvae.trainer(jvae.elbo(model), optax.adam(1e-2), batch_size=100)
  st = tr.init(model.init(jax.random.key(0), x[:2]), jax.random.key(1))
  with pytest.raises(ValueError, match=r"100.*64"):
    tr.epoch(st, x)


@pytest.mark.parametrize("batch_size", [0, -3])
def test_nonpositive_batch_size_raises(model, batch_size):
  with pytest.raises(ValueError, match="batch_size"):
    jvae.trainer(jvae.elbo(model), optax.adam(1e-2), batch_size=batch_size)


# ------------------------------------------------------------------------------------------------
# non-finite steps
# ------------------------------------------------------------------------------------------------

MARKER = 7.0


def _poisoned(objective):
  """NaN bound for any batch that contains the marker value, the plain objective otherwise."""

  def f(p, k, x, beta=1.0):
    bad = jnp.any(x == MARKER)
    return jnp.where(bad, jnp.nan, objective(p, k, jnp.where(x == MARKER, 0.0, x), beta=beta))

  return f


def test_nonfinite_loss_step_is_skipped(model, data):
  x, _ = data
  tr = jvae.trainer(_poisoned(jvae.elbo(model)), optax.adam(1e-2), batch_size=8)
  step = jax.jit(tr.step)
  st = tr.init(model.init(jax.random.key(0), x[:2]), jax.random.key(1))
  for i in range(3):
    st, m = step(st, x[8 * i:8 * (i + 1)])
    assert float(m["finite"]) == 1.0

  bad_batch = x[24:32].at[3, 5].set(MARKER)
  st_bad, m = step(st, bad_batch)
  assert float(m["finite"]) == 0.0
  assert float(m["loss"]) == 0.0
  _assert_trees_equal(st_bad.params, st.params)
  _assert_trees_equal(st_bad.opt_state, st.opt_state)
  assert int(st_bad.step) == int(st.step) + 1
  assert int(st_bad.nonfinite) == int(st.nonfinite) + 1 == 1
  assert not np.array_equal(_key_data(st_bad.key), _key_data(st.key))  # the key still advances

  # finite steps after the skipped one update again
  st_next, m = step(st_bad, x[32:40])
  assert float(m["finite"]) == 1.0 and np.isfinite(float(m["loss"]))
  assert int(st_next.nonfinite) == 1
  assert any(not np.array_equal(a, b) for a, b in zip(_leaves(st_next.params),
                                                      _leaves(st_bad.params), strict=True))
  assert all(np.all(np.isfinite(a)) for a in _leaves(st_next.params))


def test_nonfinite_gradient_with_finite_loss_is_skipped():
  """sqrt(w) at w = 0: the loss is 0 (finite) but d/dw is inf; the step must still be skipped."""

  def objective(p, k, x, beta=1.0):
    return -jnp.sqrt(p["w"]) * jnp.ones(x.shape[0]) + jnp.sum(p["v"] * x, -1)

  tr = jvae.trainer(objective, optax.sgd(0.1), batch_size=4)
  st = tr.init({"w": jnp.zeros(()), "v": jnp.ones(3)}, jax.random.key(0))
  st2, m = jax.jit(tr.step)(st, jnp.ones((4, 3)))
  assert float(m["finite"]) == 0.0
  assert int(st2.nonfinite) == 1
  _assert_trees_equal(st2.params, st.params)
  _assert_trees_equal(st2.opt_state, st.opt_state)

  # once w > 0 the same objective trains normally
  st3 = tr.init({"w": jnp.ones(()), "v": jnp.ones(3)}, jax.random.key(0))
  st4, m = jax.jit(tr.step)(st3, jnp.ones((4, 3)))
  assert float(m["finite"]) == 1.0 and int(st4.nonfinite) == 0
  np.testing.assert_allclose(float(st4.params["w"]), 1.0 - 0.1 * 0.5, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(st4.params["v"]), 1.1 * np.ones(3), rtol=1e-6)


def test_epoch_counts_and_excludes_nonfinite_steps():
  """Epoch metrics: ``nonfinite`` counts skipped steps, the loss averages finite steps only."""

  def objective(p, k, x, beta=1.0):
    bad = jnp.any(x == MARKER)
    return jnp.where(bad, jnp.nan, -jnp.sum((x - p["w"]) ** 2, -1))

  n, batch_size = 8, 2
  data = jnp.arange(n, dtype=jnp.float32)[:, None].at[5, 0].set(MARKER)  # row 5 is poisoned
  tr = jvae.trainer(objective, optax.sgd(0.0), batch_size=batch_size)  # lr 0: w stays at 0
  st = tr.init({"w": jnp.zeros(1)}, jax.random.key(2))
  st2, m = jax.jit(tr.epoch)(st, data)
  assert int(m["nonfinite"]) == 1 and int(st2.nonfinite) == 1
  assert int(st2.step) == n // batch_size
  # every finite batch has loss mean(x^2) over its 2 rows; the 3 finite batches cover all rows
  # but the poisoned one and its partner, so mean loss = sum over the 6 finite rows of x^2 / 6.
  _, perm_key = jax.random.split(st.key)
  perm = np.asarray(jax.random.permutation(perm_key, n)).reshape(-1, batch_size)
  vals = np.asarray(data)[:, 0]
  finite_batches = [b for b in perm if 5 not in b]
  expected = np.mean([np.mean(vals[b] ** 2) for b in finite_batches])
  np.testing.assert_allclose(float(m["loss"]), expected, rtol=1e-6)
  np.testing.assert_allclose(float(m["bound"]), -expected, rtol=1e-6)


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


def _fit_setup(model, num_seeds, seed, lr=1e-2):
  tr = jvae.trainer(jvae.elbo(model), optax.adam(lr), batch_size=16)
  return tr, jvae.fit_init(model, tr, jvae.seed_keys(seed, num_seeds), jnp.zeros((2, EVENT)))


def test_seed_keys_and_fit_init(model):
  keys = jvae.seed_keys(3, 2)
  assert keys.shape == (2,)
  np.testing.assert_array_equal(_key_data(keys[1]), _key_data(jax.random.key(4)))
  tr, fs = _fit_setup(model, 2, 3)
  assert int(fs.epoch) == 0
  np.testing.assert_array_equal(np.asarray(fs.active), [True, True])
  np.testing.assert_array_equal(np.asarray(fs.best_value), [-np.inf, -np.inf])
  np.testing.assert_array_equal(np.asarray(fs.train.step), [0, 0])
  # different seeds, different initial params; best_params start at the initial params
  w = _leaves(fs.train.params)[0]
  assert not np.array_equal(w[0], w[1])
  _assert_trees_equal(fs.best_params, fs.train.params)
  with pytest.raises(ValueError, match="num_seeds"):
    jvae.fit_init(model, tr, jax.random.split(jax.random.key(0), (2, 2)), jnp.zeros((2, EVENT)))


def test_seed_axis_equals_separate_runs(model, data):
  x, xv = data
  epochs = 4
  tr, fs = _fit_setup(model, 3, 0)
  fs, hist = jvae.fit(tr, fs, x, xv, epochs=epochs, valid_bound=jvae.elbo(model), patience=None)
  assert len(hist) == epochs and [r["epoch"] for r in hist] == [1, 2, 3, 4]
  assert int(fs.epoch) == epochs
  np.testing.assert_array_equal(np.asarray(fs.train.step), [epochs * (N_TRAIN // 16)] * 3)
  for i in range(3):
    tr1, fs1 = _fit_setup(model, 1, i)
    fs1, hist1 = jvae.fit(tr1, fs1, x, xv, epochs=epochs, valid_bound=jvae.elbo(model),
                          patience=None)
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
  # the seeds really differ
  assert not np.allclose(hist[-1]["valid_bound"][0], hist[-1]["valid_bound"][1])


def test_fit_records_and_best_tracking(model, data):
  x, xv = data
  tr, fs = _fit_setup(model, 2, 0)
  seen = []
  fs, hist = jvae.fit(tr, fs, x, xv, epochs=3, valid_bound=jvae.elbo(model), patience=None,
                      callback=lambda s, r: seen.append((s, r)))
  assert [r["epoch"] for _, r in seen] == [1, 2, 3]
  for r in hist:
    assert r["seconds"] > 0 and r["steps_per_s"] > 0
    for name in ("train_bound", "valid_bound", "best_valid_bound", "nonfinite", "active"):
      assert r[name].shape == (2,), name
  v = np.stack([r["valid_bound"] for r in hist])  # (epochs, seeds)
  np.testing.assert_allclose(np.asarray(fs.best_value), v.max(0), rtol=0)
  np.testing.assert_array_equal(np.asarray(fs.best_epoch), v.argmax(0) + 1)
  np.testing.assert_allclose(np.stack([r["best_valid_bound"] for r in hist]),
                             np.maximum.accumulate(v, axis=0), rtol=0)
  for i in range(2):
    best_state = seen[int(fs.best_epoch[i]) - 1][0]
    _assert_trees_equal(_seed(fs.best_params, i), _seed(best_state.train.params, i))
  with pytest.raises(ValueError, match="epochs"):
    jvae.fit(tr, fs, x, epochs=-1)


def test_fit_without_validation_tracks_last_params(model, data):
  x, _ = data
  tr, fs = _fit_setup(model, 2, 0)
  fs, hist = jvae.fit(tr, fs, x, epochs=2)
  assert len(hist) == 2 and "valid_bound" not in hist[0]
  _assert_trees_equal(fs.best_params, fs.train.params)
  np.testing.assert_array_equal(np.asarray(fs.best_epoch), [2, 2])


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


def test_per_seed_early_stopping():
  tr = jvae.trainer(_quad_objective, optax.sgd(0.05), batch_size=4)
  x, xv = jnp.ones((8, 1)), jnp.ones((3, 1))
  # seed 0 moves 0 -> 1, away from C: improves once (from -inf), then worsens -> stops at epoch 2.
  # seed 1 moves 3 -> 1, towards C: improves every epoch.
  fs = _quad_fit_state(tr, [0.0, 3.0])
  states = []
  fs, hist = jvae.fit(tr, fs, x, xv, epochs=6, valid_bound=_quad_valid, patience=1,
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
  assert all(b < a for a, b in zip(w1, w1[1:], strict=False)), w1
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
  tr = jvae.trainer(_quad_objective, optax.sgd(0.05), batch_size=4)
  x, xv = jnp.ones((8, 1)), jnp.ones((3, 1))
  # both seeds move away from C after their first epoch
  fs = _quad_fit_state(tr, [0.0, 0.5])
  fs, hist = jvae.fit(tr, fs, x, xv, epochs=10, valid_bound=_quad_valid, patience=1)
  assert len(hist) == 2 and int(fs.epoch) == 2
  np.testing.assert_array_equal(np.asarray(fs.active), [False, False])
  np.testing.assert_array_equal(np.asarray(fs.best_epoch), [1, 1])
  # patience=2 tolerates one bad epoch: stops after epoch 3
  fs = _quad_fit_state(tr, [0.0, 0.5])
  fs, hist = jvae.fit(tr, fs, x, xv, epochs=10, valid_bound=_quad_valid, patience=2)
  assert len(hist) == 3
  # resuming a fully stopped state does nothing
  fs2, hist2 = jvae.fit(tr, fs, x, xv, epochs=10, valid_bound=_quad_valid, patience=2)
  assert hist2 == [] and fs2 is fs


def test_make_epoch_fn_inactive_seed_is_frozen():
  """A seed marked inactive by hand is untouched by an epoch, bookkeeping included."""
  tr = jvae.trainer(_quad_objective, optax.sgd(0.05), batch_size=4)
  x, xv = jnp.ones((8, 1)), jnp.ones((3, 1))
  fs = _quad_fit_state(tr, [3.0, 3.0])._replace(active=jnp.array([True, False]))
  epoch_fn = jax.jit(jvae.make_epoch_fn(tr, _quad_valid, patience=1))
  fs2, m = epoch_fn(fs, x, xv)
  _train_state_equal(_seed(fs2.train, 1), _seed(fs.train, 1))
  assert float(fs2.best_value[1]) == -np.inf and int(fs2.best_epoch[1]) == 0
  assert int(fs2.bad_epochs[1]) == 0 and not bool(fs2.active[1])
  assert int(fs2.train.step[0]) == 2 and int(fs2.best_epoch[0]) == 1 and bool(fs2.active[0])
  assert int(fs2.epoch) == 1


def test_per_seed_nonfinite_isolated(model, data):
  """A seed with a NaN parameter skips every step; the other seed trains as if alone."""
  x, xv = data
  epochs = 2
  tr, fs = _fit_setup(model, 2, 0)
  nan_first = lambda a: a.at[1].set(a[1].at[(0,) * (a.ndim - 1)].set(jnp.nan))
  leaf_path, _ = jax.tree_util.tree_flatten_with_path(fs.train.params)
  first_leaf = leaf_path[0][0]
  params = jax.tree_util.tree_map_with_path(
      lambda path, a: nan_first(a) if path == first_leaf else a, fs.train.params)
  fs = fs._replace(train=fs.train._replace(params=params), best_params=params)
  bad_before = _seed(fs.train, 1)
  fs, hist = jvae.fit(tr, fs, x, xv, epochs=epochs, valid_bound=jvae.elbo(model), patience=None)

  steps = N_TRAIN // 16
  for r in hist:
    np.testing.assert_array_equal(r["nonfinite"], [0, steps])
    assert np.isfinite(r["train_bound"][0]) and np.isfinite(r["valid_bound"][0])
    assert r["train_bound"][1] == 0.0  # no finite step: loss sum 0 / max(0, 1)
  bad = _seed(fs.train, 1)
  _assert_trees_equal(bad.params, bad_before.params)
  _assert_trees_equal(bad.opt_state, bad_before.opt_state)
  assert int(bad.nonfinite) == epochs * steps and int(bad.step) == epochs * steps
  assert int(fs.best_epoch[1]) == 0 and float(fs.best_value[1]) == -np.inf

  tr1, fs1 = _fit_setup(model, 1, 0)
  fs1, hist1 = jvae.fit(tr1, fs1, x, xv, epochs=epochs, valid_bound=jvae.elbo(model),
                        patience=None)
  _assert_trees_close(_seed(fs.train.params, 0), _seed(fs1.train.params, 0))
  _assert_trees_close(_seed(fs.best_params, 0), _seed(fs1.best_params, 0))
  assert int(fs.train.nonfinite[0]) == 0
  for r, r1 in zip(hist, hist1, strict=True):
    np.testing.assert_allclose(r["valid_bound"][0], r1["valid_bound"][0], rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# resume
# ------------------------------------------------------------------------------------------------


def test_resume_equals_straight_run(model, data):
  x, xv = data
  kw = dict(valid_bound=jvae.elbo(model), patience=None)
  tr, fs0 = _fit_setup(model, 2, 0)
  straight, hist = jvae.fit(tr, fs0, x, xv, epochs=4, **kw)
  half, hist_a = jvae.fit(tr, fs0, x, xv, epochs=2, **kw)
  assert int(half.epoch) == 2 and len(hist_a) == 2
  resumed, hist_b = jvae.fit(tr, half, x, xv, epochs=4, **kw)
  assert [r["epoch"] for r in hist_b] == [3, 4]
  _assert_trees_equal(resumed.train.params, straight.train.params)
  _assert_trees_equal(resumed.train.opt_state, straight.train.opt_state)
  _assert_trees_equal(resumed.best_params, straight.best_params)
  np.testing.assert_array_equal(np.asarray(resumed.best_epoch), np.asarray(straight.best_epoch))
  np.testing.assert_array_equal(np.asarray(resumed.train.step), np.asarray(straight.train.step))
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
