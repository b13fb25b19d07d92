"""The fast paths of issue 15 keep results: each optimised form against its reference.

* The trainer's non-finite guard tests one scalar, ``isfinite(loss + Σ g)``
  (``steps._finite_step``), instead of every gradient entry: the same decision as the entrywise
  test on any NaN/±inf pattern, the same params (bitwise) on finite steps, the same skip on a
  non-finite one; its one documented difference is a sum of finite values that overflows.
* ``GaussianPosterior(fuse_heads=True)`` (the presets' head) computes loc and scale with one
  matmul of width 2d from two ``nn.Dense`` parameter sets: the parameter tree and init values are
  those of two ``nn.Dense`` (old checkpoints restore), the outputs equal within float32 rounding
  (the GEMM's summation order); the default ``fuse_heads=False`` is bitwise the two-Dense head.
* The epoch gathers its batches with ``jnp.take(mode="clip")``: bitwise the default take for the
  in-range indices of a permutation.
"""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jvae
from jvae.bounds.numerics import softplus_scale
from jvae.distributions.posteriors import GaussianPosterior
from jvae.training import steps


def _entrywise_ok(loss, grads):
  """The reference guard: the loss and every gradient entry finite."""
  leaves = [jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)]
  return jnp.isfinite(loss) & jnp.all(jnp.stack(leaves))


def _assert_trees_equal(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


SHAPES = {"s": (), "b": (7,), "k": (5, 3), "t": (2, 3, 4)}


def _grads(rng, dtype=np.float32):
  return {name: jnp.asarray(rng.normal(0.0, 10.0, shape), dtype) for name, shape in SHAPES.items()}


# ------------------------------------------------------------------------------------------------
# the guard's predicate


def test_finite_step_decides_as_the_entrywise_test():
  """NaN, +inf, -inf (one, several, +inf and -inf in different leaves so that a sum could
  cancel) anywhere, in the loss or in any leaf: the scalar test agrees with the entrywise one."""
  rng = np.random.default_rng(0)
  finite_step = jax.jit(steps._finite_step)
  cases = 0
  for trial in range(60):
    grads = _grads(rng)
    loss = jnp.asarray(rng.normal(), jnp.float32)
    for _ in range(trial % 4):  # 0 to 3 non-finite entries
      name = list(SHAPES)[rng.integers(len(SHAPES))]
      bad = [np.nan, np.inf, -np.inf][rng.integers(3)]
      flat = np.asarray(grads[name]).reshape(-1).copy()
      flat[rng.integers(flat.size)] = bad
      grads[name] = jnp.asarray(flat.reshape(SHAPES[name]))
    if trial % 7 == 0:
      loss = jnp.asarray([np.nan, np.inf, -np.inf][trial % 3], jnp.float32)
    assert bool(finite_step(loss, grads)) == bool(_entrywise_ok(loss, grads)), trial
    cases += 1
  # +inf in one leaf, -inf in another: a sum is NaN, never finite
  grads = _grads(rng)
  grads["k"] = grads["k"].at[1, 2].set(jnp.inf)
  grads["t"] = grads["t"].at[0, 1, 3].set(-jnp.inf)
  assert not bool(finite_step(jnp.float32(1.0), grads))
  assert bool(finite_step(jnp.float32(1.0), _grads(rng)))
  assert cases == 60


def test_finite_step_under_vmap_is_per_seed():
  rng = np.random.default_rng(1)
  stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[_grads(rng) for _ in range(4)])
  stacked["k"] = stacked["k"].at[1, 0, 0].set(jnp.nan)
  stacked["b"] = stacked["b"].at[3, 6].set(-jnp.inf)
  losses = jnp.asarray([0.5, 1.0, 2.0, 3.0], jnp.float32).at[2].set(jnp.inf)
  got = jax.jit(jax.vmap(steps._finite_step))(losses, stacked)
  want = jax.vmap(_entrywise_ok)(losses, stacked)
  np.testing.assert_array_equal(np.asarray(got), [True, False, False, False])
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_finite_step_half_precision_sums_in_float32():
  """1e5 entries of 1.0 in float16 sum to 1e5 > 65504 (fp16's max): still finite (fp32 sum)."""
  grads = {"h": jnp.ones((400, 250), jnp.float16), "v": jnp.ones((100_000,), jnp.bfloat16)}
  assert bool(jax.jit(steps._finite_step)(jnp.float32(0.0), grads))
  grads["h"] = grads["h"].at[3, 4].set(jnp.inf)
  assert not bool(jax.jit(steps._finite_step)(jnp.float32(0.0), grads))


def test_finite_step_overflow_is_the_documented_false_positive():
  """The one difference from the entrywise test: finite entries whose sum overflows float32
  (here 2 × 3e38) count as a non-finite step and are skipped."""
  grads = {"k": jnp.zeros((4, 4)).at[0, 0].set(3e38).at[2, 1].set(3e38)}
  assert bool(_entrywise_ok(jnp.float32(0.0), grads))
  assert not bool(jax.jit(steps._finite_step)(jnp.float32(0.0), grads))
  grads = {"k": jnp.zeros((4, 4)).at[0, 0].set(1e30).at[2, 1].set(-3e38)}  # no overflow
  assert bool(jax.jit(steps._finite_step)(jnp.float32(0.0), grads))


# ------------------------------------------------------------------------------------------------
# the guarded step against a reference step with the entrywise guard

EVENT, BATCH = 12, 8


def _mlp_objective(p, key, x, beta=1.0):
  """A small two-layer regression with a key-dependent noise term (per example, like a bound)."""
  eps = jax.random.normal(key, (x.shape[0], p["w2"].shape[1]))
  h = jnp.tanh(x @ p["w1"] + p["b1"])
  out = h @ p["w2"] + p["b2"] + 0.1 * eps
  return -beta * jnp.sum(jnp.square(out - x[:, :3]), -1)


def _reference_step(objective, optimizer):
  """The trainer's step as it was: the entrywise test and a lax.cond around the update."""

  def step(state, x):
    key, sub = jax.random.split(state.key)
    loss, grads = jax.value_and_grad(lambda p: -jnp.mean(objective(p, sub, x)))(state.params)
    ok = _entrywise_ok(loss, grads)

    def apply():
      updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
      return optax.apply_updates(state.params, updates), opt_state

    params, opt_state = jax.lax.cond(ok, apply, lambda: (state.params, state.opt_state))
    return state._replace(params=params, opt_state=opt_state, step=state.step + 1, key=key,
                          nonfinite=state.nonfinite + (~ok).astype(jnp.int32))

  return step


def test_guarded_step_equals_reference_and_skips_the_same_steps():
  """Adam on a small MLP: bitwise the entrywise-guarded step's params, moments, counts and keys
  at every step, finite (updated) or not (a NaN input: skipped, state unchanged)."""
  optimizer = optax.adam(1e-2)
  tr = jvae.trainer(_mlp_objective, optimizer, batch_size=BATCH)
  x = jax.random.normal(jax.random.key(0), (6, BATCH, EVENT))
  x = x.at[3, 2, 5].set(jnp.nan)  # batch 3 has a NaN entry: a NaN loss, a skipped step
  ks = jax.random.split(jax.random.key(1), 2)
  params = {"w1": 0.3 * jax.random.normal(ks[0], (EVENT, 10)), "b1": jnp.zeros(10),
            "w2": 0.3 * jax.random.normal(ks[1], (10, 3)), "b2": jnp.zeros(3)}
  state = tr.init(params, jax.random.key(2))
  step, ref = jax.jit(tr.step), jax.jit(_reference_step(_mlp_objective, optimizer))
  s_new, s_ref = state, state
  for i in range(x.shape[0]):
    before = s_new
    s_new, m = step(s_new, x[i])
    s_ref = ref(s_ref, x[i])
    _assert_trees_equal((s_new.params, s_new.opt_state, s_new.step, s_new.nonfinite),
                        (s_ref.params, s_ref.opt_state, s_ref.step, s_ref.nonfinite))
    np.testing.assert_array_equal(np.asarray(jax.random.key_data(s_new.key)),
                                  np.asarray(jax.random.key_data(s_ref.key)))
    if i == 3:
      assert float(m["finite"]) == 0.0
      _assert_trees_equal((s_new.params, s_new.opt_state), (before.params, before.opt_state))
    else:
      assert float(m["finite"]) == 1.0
      assert not np.array_equal(np.asarray(s_new.params["w1"]), np.asarray(before.params["w1"]))
  assert int(s_new.nonfinite) == 1


def test_guard_skips_an_inf_gradient_entry_of_a_matrix_with_a_finite_loss():
  """d sqrt(w)/dw = inf at one entry of a kernel, the loss finite: skipped, state unchanged."""

  def objective(p, key, x, beta=1.0):
    return -jnp.sum(jnp.sqrt(p["w"])) - jnp.sum((x @ p["v"]) ** 2, -1)

  tr = jvae.trainer(objective, optax.adam(0.1), batch_size=4)
  w = jnp.ones((3, 5)).at[1, 2].set(0.0)
  state = tr.init({"w": w, "v": jnp.ones((2, 3))}, jax.random.key(0))
  new, m = jax.jit(tr.step)(state, jnp.ones((4, 2)))
  assert float(m["finite"]) == 0.0 and int(new.nonfinite) == 1
  _assert_trees_equal((new.params, new.opt_state), (state.params, state.opt_state))
  state = tr.init({"w": w.at[1, 2].set(1.0), "v": jnp.ones((2, 3))}, jax.random.key(0))
  new, m = jax.jit(tr.step)(state, jnp.ones((4, 2)))
  assert float(m["finite"]) == 1.0 and int(new.nonfinite) == 0


# ------------------------------------------------------------------------------------------------
# the Gaussian posterior's single matmul


class _TwoDenseGaussianPosterior(nn.Module):
  """GaussianPosterior as it was: two nn.Dense heads."""

  latent_dim: int
  min_scale: float = 1e-4

  @nn.compact
  def __call__(self, h):
    loc = nn.Dense(self.latent_dim, name="loc")(h)
    scale = softplus_scale(nn.Dense(self.latent_dim, name="scale")(h), self.min_scale)
    return loc, scale


def test_gaussian_posterior_keeps_the_parameters_of_two_dense_heads():
  h = jax.random.normal(jax.random.key(3), (32, 20))
  fused = GaussianPosterior(6, fuse_heads=True)
  old = _TwoDenseGaussianPosterior(6).init(jax.random.key(4), h)
  _assert_trees_equal(fused.init(jax.random.key(4), h), old)  # names, shapes and init values
  _assert_trees_equal(GaussianPosterior(6).init(jax.random.key(4), h), old)
  restored = flax.serialization.from_bytes(fused.init(jax.random.key(0), h),
                                           flax.serialization.to_bytes(old))
  _assert_trees_equal(restored, old)
  assert jvae.burda2015().encoder.head.fuse_heads  # the preset's head is the fused one

  # trained-looking params (not the init), the old checkpoint applied to the new module
  params = jax.tree_util.tree_map(
      lambda a: a + 0.3 * jax.random.normal(jax.random.key(5), a.shape), old)
  loc, scale = _TwoDenseGaussianPosterior(6).apply(params, h)
  q = jax.jit(fused.apply)(params, h)
  np.testing.assert_allclose(np.asarray(q.loc), np.asarray(loc), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(q.scale_diag), np.asarray(scale), rtol=1e-6, atol=1e-7)
  unfused = GaussianPosterior(6).apply(params, h)  # the default: bitwise the old head
  np.testing.assert_array_equal(np.asarray(unfused.loc), np.asarray(loc))
  np.testing.assert_array_equal(np.asarray(unfused.scale_diag), np.asarray(scale))

  def grads(apply):
    def f(p):
      loc, scale = apply(p)
      return jnp.sum(jnp.sin(loc) * scale)
    return jax.grad(f)(params)

  g_old = grads(lambda p: _TwoDenseGaussianPosterior(6).apply(p, h))
  g_new = jax.jit(lambda: grads(lambda p: (lambda q: (q.loc, q.scale_diag))(fused.apply(p, h))))()
  for a, b in zip(jax.tree_util.tree_leaves(g_new), jax.tree_util.tree_leaves(g_old), strict=True):
    b = np.asarray(b)  # float32 rounding of a differently blocked GEMM, relative to the scale
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6 * np.abs(b).max())


# ------------------------------------------------------------------------------------------------
# the epoch's gather


def test_take_clip_is_the_default_take_for_permutation_indices():
  data = jax.random.normal(jax.random.key(6), (40, 3, 2))
  batch = jvae.Batch(data, y=jnp.arange(40) % 3)
  idx = jax.random.permutation(jax.random.key(7), 40)[:32].reshape(4, 8)
  for rows in idx:
    got = jax.jit(steps._take)(data, rows)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.take(data, rows, axis=0)))
    want = jax.tree_util.tree_map(lambda a, r=rows: jnp.take(a, r, axis=0), batch)
    _assert_trees_equal(jax.jit(steps._take)(batch, rows), want)
