"""Training as pure functions: ``init``/``step``/``epoch`` over a train-state pytree (layer 5).

The factory :func:`trainer` closes over an objective ``f(params, key, x)`` and an optax optimizer
and returns a :class:`Trainer` of pure functions (like optax's ``GradientTransformation`` or
blackjax's ``init``/``step``). An epoch is one ``lax.scan`` over the batches of a shuffled,
device-resident data set, so the host syncs once per epoch. Seeds are an axis: ``jax.vmap`` the
functions over stacked states (see :func:`jvae.fit`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import custom_batching

from jvae.bounds.numerics import check_number
from jvae.bounds.stabilizers import linear_warmup
from jvae.models.contract import Batch, data_of
from jvae.objectives.log_weights import check_beta

Array = jax.Array


class TrainState(NamedTuple):
  """Everything that determines the rest of a run; a plain pytree.

  Attributes:
    params: model parameters.
    opt_state: optimizer state.
    step: number of steps taken (int32 scalar), skipped ones included.
    key: PRNG key for shuffling and sampling; split at every use.
    nonfinite: number of steps skipped because the loss or a gradient was not finite.
    objective_state: the objective's own state, for objectives that have one (the moving
      averages of the score-function baselines, ``f.init_state()``); ``None`` otherwise.
  """

  params: Any
  opt_state: Any
  step: Array
  key: Array
  nonfinite: Array
  objective_state: Any = None


class Trainer(NamedTuple):
  """Pure training functions bound to an objective and an optimizer.

  Attributes:
    init: ``(params, key) -> TrainState``.
    step: ``(state, batch) -> (state, metrics)`` for one batch: x of shape ``(batch, *event)``
      or a :class:`jvae.Batch`.
    epoch: ``(state, data) -> (state, metrics)``: shuffle ``data`` (x ``(N, *event)`` or a
      :class:`jvae.Batch` of arrays with leading axis N), run
      ``N // batch_size`` steps in one ``lax.scan``; metrics are epoch means (``loss``, ``bound``)
      and counts (``nonfinite``). The result is that of ``step`` applied batch by batch; the
      scan runs without the per-step guard and is redone with it only when a step was not
      finite (under ``jax.vmap``; see :func:`trainer`).
    interleaved_epoch: ``(states, data) -> ((state, metrics), ...)`` for a tuple of independent
      states (e.g. seeds): ``epoch`` of each, their un-batched steps side by side in one
      ``lax.scan`` body, so that XLA:CPU runs one state's elementwise work beside another's
      matmuls; each result is that state's ``epoch`` (no batched dots, unlike ``vmap``). None
      for a hand-built Trainer: :func:`jvae.make_epoch_fn` then maps ``epoch`` instead.
  """

  init: Callable[..., TrainState]
  step: Callable[..., tuple[TrainState, dict]]
  epoch: Callable[..., tuple[TrainState, dict]]
  interleaved_epoch: Callable[..., tuple] | None = None


def _finite_step(loss: Array, grads) -> Array:
  """Whether a step may be applied: ``isfinite(loss + Σ_leaves Σ_entries g)``, one scalar.

  Sufficient: under IEEE arithmetic a NaN or ±inf anywhere makes the sum NaN or ±inf (inf +
  finite = inf, inf − inf = NaN, NaN absorbs), whatever the order of summation, so a step whose
  loss or any gradient entry is not finite is never applied. The converse fails only when a sum
  of finite values overflows (|Σ| > 3.4e38 in float32, i.e. gradients averaging ~1e33 in
  magnitude for a 10⁵-parameter model); such a step is skipped as non-finite. (A sum of squares
  would overflow from |g| ≈ 1e19, which is why the plain sum is used; Adam's own g² already
  overflows there.) Half-precision leaves are summed in float32, so fp16's small range adds no
  false positives.

  Cost: a matrix's entries are summed as a vector-matrix product with ones (then the short
  vector), which XLA runs at memory bandwidth, where ``all(isfinite(g))`` compiles to three
  passes per leaf (a bool array, a windowed and a final reduction) and ``sum(g)`` to two. Issue
  15, one 784×200 gradient on a loaded 2-core CPU: 75 µs entrywise, 20 µs ``sum``, 10 µs this,
  per step; the Burda et al. (2015) epoch ran ~8% faster than with the entrywise test.
  """
  total = jnp.asarray(loss)
  for g in jax.tree_util.tree_leaves(grads):
    if not jnp.issubdtype(g.dtype, jnp.inexact):  # float0 or integer leaves: always finite
      continue
    acc = jnp.promote_types(g.dtype, jnp.float32)
    if g.ndim >= 2:
      g2 = g.reshape(g.shape[0], -1)
      cols = jax.lax.dot(jnp.ones((g2.shape[0],), g.dtype), g2,
                         precision=jax.lax.Precision.HIGHEST, preferred_element_type=acc)
      total = total + jnp.sum(cols)
    else:
      total = total + jnp.sum(g, dtype=acc)
  return jnp.isfinite(total)


@custom_batching.custom_vmap
def _every(ok: Array) -> Array:
  """``ok`` itself; under ``vmap``, one unbatched ``all(ok)`` over the mapped axis.

  The vmapped guard branches on this, so that the common all-finite step stays a real
  ``lax.cond``: a batched predicate would turn the cond into an elementwise select over params
  and optimizer moments. Over a seed axis sharded across devices it is one scalar all-reduce.
  """
  return ok


@_every.def_vmap
def _every_vmap(axis_size, in_batched, ok):
  del axis_size
  (batched,) = in_batched
  return (jnp.all(ok) if batched else ok), False


def _where(ok: Array, new, old):
  return jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)


def _unbatched_or_vmapped(unbatched: Callable, vmapped: Callable) -> Callable:
  """``unbatched`` as it is; under ``jax.vmap``, ``jax.vmap(vmapped)`` instead.

  For two implementations of the same function whose best XLA program differs with and without
  a batch axis (``jax.custom_batching.custom_vmap``). Every output is batched.
  """
  fn = custom_batching.custom_vmap(unbatched)

  @fn.def_vmap
  def _rule(axis_size, in_batched, *args):
    del axis_size
    in_axes = jax.tree_util.tree_map(lambda b: 0 if b else None, tuple(in_batched))
    out = jax.vmap(vmapped, in_axes=in_axes)(*args)
    return out, jax.tree_util.tree_map(lambda _: True, out)

  return fn


def trainer(objective: Callable, optimizer: optax.GradientTransformation, *, batch_size: int,
            warmup_steps: int = 0, beta: float = 1.0,
            temperature: float | Callable[[Array], Array] | None = None,
            batch_sharding: jax.sharding.Sharding | None = None,
            sub_batches: int = 1, unroll: int = 1) -> Trainer:
  """Build pure ``init``/``step``/``epoch`` functions that maximise ``objective``.

  The loss is ``-mean(objective(params, key, x, beta=β(step)))``. An objective with its own
  state (``objective.with_state``, e.g. a score-function estimator with a moving-average
  baseline) has it kept in ``TrainState.objective_state`` and updated at every finite step. A
  step whose loss or gradient is not finite leaves params and optimizer state unchanged and
  increments ``state.nonfinite``. The test is the finiteness of one scalar, the loss plus the sum
  of every gradient entry: never true when an entry is NaN or ±inf, and false for finite entries
  only when their sum overflows the float range (~1e33 per entry), a step that is then skipped.

  Cost of that guard: XLA does not update the outputs of a branch in place, so a guarded step
  copies the params and optimizer moments. Un-batched, a ``lax.cond`` whose skip branch returns
  its inputs is the cheapest form. Under ``jax.vmap`` (seeds) the copies are N times larger and a
  per-seed predicate would turn the cond into a select, so ``step`` and ``epoch`` have vmap
  rules (``jax.custom_batching.custom_vmap``): the vmapped ``epoch`` first runs its scan
  unguarded, and when every step of every seed was finite (the guard would have changed nothing)
  keeps that result; otherwise it runs the epoch again from its start with guarded steps. Those
  branch on one scalar, "every seed finite", and a step where some seed is not takes a per-seed
  select; so one seed's non-finite step costs the others a slower, still exact, epoch.

  Args:
    objective: ``f(params, key, x, *, beta) -> Array[batch]``, e.g. ``jvae.elbo(model)``.
    optimizer: an optax transformation, e.g. ``optax.adam(1e-3)`` or ``optax.adamax(1e-3)``.
    batch_size: examples per step (static).
    warmup_steps: KL warm-up length N: β rises linearly from 0 to ``beta`` over N steps
      (Bowman et al. 2015; Sønderby et al. 2016); 0 keeps β = ``beta`` throughout.
    beta: the final (or constant) β.
    temperature: for relaxed models (e.g. Concrete latents): a constant τ, or a schedule
      ``step -> τ`` such as :func:`jvae.stabilizers.exponential_temperature` (Jang et al.
      2017), passed to the objective as ``temperature=``; None leaves the model's own.
    batch_sharding: optional sharding of each batch over a device mesh (data parallelism); the
      gradient reduction across devices is then done by XLA.
    sub_batches: S ≥ 1 (static): each batch's bound is computed as S independent sub-batches of
      ``batch / S`` rows side by side in the step, sub-batch i with its own key
      ``fold_in(step_key, i)``. The loss is the same mean over the batch and its gradient the
      same estimator (every example still gets its own independent noise); only the random
      stream differs from S = 1. The sub-batches' matmul chains are independent, so XLA:CPU's
      concurrent executor can run them on different cores at once: ``benchmarks/peers.py``
      measures S = 2 on 2 cores (its ``jvae_sub_batches`` row). On a GPU keep 1. S must
      divide the batch; a stateful objective (its state is a statistic of the whole batch) and
      ``batch_sharding`` (the devices already split the batch) are refused.
    unroll: U ≥ 1 (static): steps per iteration of the epoch's ``lax.scan`` (its ``unroll``).
      The same steps in the same order, so the same result up to float32 rounding (XLA may
      fuse the longer body's elementwise work in another order; ``tests/test_trainer_unroll.py``
      checks it), for a longer compile (the body is U steps). With ``sub_batches=2`` on 2 CPU
      cores U = 2 kept the cores busier and measured fastest (``benchmarks/peers.py``, its
      ``jvae_sub_batches`` row); with S = 1 it measured within the noise of U = 1.

  Raises:
    ValueError: an invalid ``batch_size``, ``beta``, ``temperature``, ``sub_batches`` or
      ``unroll``.
  """
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
  if isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1:
    raise ValueError(f"unroll must be an integer >= 1 (steps per scan iteration), got {unroll!r}")
  check_beta(beta)
  schedule = linear_warmup(warmup_steps, beta_max=beta)
  stateful = callable(getattr(objective, "with_state", None))
  _check_sub_batches(sub_batches, batch_size, stateful=stateful,
                     sharded=batch_sharding is not None)
  if temperature is not None and not callable(temperature):
    check_number(temperature, "trainer temperature", minimum=0.0, strict=True)

  def init(params, key) -> TrainState:
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32), key,
                      jnp.zeros((), jnp.int32),
                      objective.init_state() if stateful else None)

  def options(step):
    if temperature is None:
      return {}
    tau = temperature(step) if callable(temperature) else temperature
    return {"temperature": jnp.asarray(tau, jnp.float32)}

  def guarded_step(state: TrainState, x: Array, *, guard: str | None):
    """One step; ``guard``: "unbatched", "vmapped" (see the docstring above) or None."""
    key, sub = jax.random.split(state.key)
    x = _as_float(x)
    if batch_sharding is not None:
      x = jax.lax.with_sharding_constraint(x, batch_sharding)
    b = schedule(state.step)
    kwargs = options(state.step)

    def loss_fn(params):
      if stateful:
        values, new = objective.with_state(params, sub, x, state.objective_state, beta=b,
                                           **kwargs)
        return -jnp.mean(values), new
      return -jnp.mean(_sub_batched(objective, sub_batches)(params, sub, x, beta=b,
                                                            **kwargs)), None

    (loss, objective_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    ok = _finite_step(loss, grads)
    objective_state = _where(ok, objective_state, state.objective_state)

    def apply_update():
      updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
      return optax.apply_updates(state.params, updates), opt_state

    def apply_where_finite():
      return _where(ok, apply_update(), (state.params, state.opt_state))

    if guard == "unbatched":
      params, opt_state = jax.lax.cond(ok, apply_update,
                                       lambda: (state.params, state.opt_state))
    elif guard == "vmapped":
      params, opt_state = jax.lax.cond(_every(ok), apply_update, apply_where_finite)
    else:
      params, opt_state = apply_update()
    new_state = TrainState(params, opt_state, state.step + 1, key,
                           state.nonfinite + (~ok).astype(jnp.int32), objective_state)
    metrics = {"loss": jnp.where(ok, loss, 0.0), "finite": ok.astype(jnp.float32),
               "beta": jnp.asarray(b, jnp.float32), **kwargs}
    return new_state, metrics

  step = _unbatched_or_vmapped(functools.partial(guarded_step, guard="unbatched"),
                               functools.partial(guarded_step, guard="vmapped"))

  def epoch_indices(state: TrainState, data):
    """``(start, idx)``: the state the epoch starts from and its ``(steps, batch)`` rows."""
    n = data_of(data).shape[0]
    num_batches = n // batch_size
    if num_batches < 1:
      raise ValueError(f"batch_size {batch_size} is larger than the data set ({n} examples)")
    key, perm_key = jax.random.split(state.key)
    idx = jax.random.permutation(perm_key, n)[: num_batches * batch_size]
    return state._replace(key=key), idx.reshape(num_batches, batch_size)

  def epoch_metrics(start: TrainState, state: TrainState, m: dict) -> dict:
    finite = jnp.maximum(jnp.sum(m["finite"]), 1.0)
    loss = jnp.sum(m["loss"]) / finite
    extra = {"temperature": m["temperature"][-1]} if "temperature" in m else {}
    return {"loss": loss, "bound": -loss, "nonfinite": state.nonfinite - start.nonfinite,
            "beta": m["beta"][-1], **extra}

  def run_epoch(state: TrainState, data: Array, *, guard: str):
    start, idx = epoch_indices(state, data)

    def run(guard):
      def body(s, batch_idx):
        return guarded_step(s, _take(data, batch_idx), guard=guard)
      return jax.lax.scan(body, start, idx, unroll=unroll)

    if guard == "vmapped":  # unguarded first, see the docstring above
      unguarded = run(None)
      state, m = jax.lax.cond(_every(jnp.all(unguarded[1]["finite"] > 0)), lambda: unguarded,
                              lambda: run(guard))
    else:
      state, m = run(guard)
    return state, epoch_metrics(start, state, m)

  def interleaved_epoch(states, data):
    """``epoch`` of each state in the tuple ``states``, their steps in one scan body."""
    if not isinstance(states, (tuple, list)) or not states:
      raise ValueError("interleaved_epoch needs a non-empty tuple of TrainStates, got "
                       f"{type(states).__name__} of length {len(states) if states else 0}")
    starts, idx = zip(*(epoch_indices(s, data) for s in states), strict=True)

    def body(ss, batch_idx):
      out = [guarded_step(s, _take(data, i), guard="unbatched")
             for s, i in zip(ss, batch_idx, strict=True)]
      return tuple(o[0] for o in out), tuple(o[1] for o in out)

    ends, ms = jax.lax.scan(body, tuple(starts), tuple(idx), unroll=unroll)
    return tuple((end, epoch_metrics(start, end, m))
                 for start, end, m in zip(starts, ends, ms, strict=True))

  epoch = _unbatched_or_vmapped(functools.partial(run_epoch, guard="unbatched"),
                                functools.partial(run_epoch, guard="vmapped"))

  return Trainer(init, step, epoch, interleaved_epoch)


def _check_sub_batches(sub_batches, batch_size: int, *, stateful: bool, sharded: bool) -> None:
  if isinstance(sub_batches, bool) or not isinstance(sub_batches, int) or sub_batches < 1:
    raise ValueError(f"sub_batches must be an integer >= 1, got {sub_batches!r}")
  if sub_batches == 1:
    return
  if batch_size % sub_batches:
    raise ValueError(f"sub_batches={sub_batches} must divide batch_size={batch_size}")
  if stateful:
    raise ValueError("sub_batches > 1 needs a stateless objective: this one keeps a state "
                     "(e.g. a moving-average baseline) computed from the whole batch")
  if sharded:
    raise ValueError("sub_batches > 1 and batch_sharding exclude each other: with a sharded "
                     "batch the devices already split it")


def _sub_batched(objective: Callable, sub_batches: int) -> Callable:
  """``objective`` over a batch as ``sub_batches`` independent sub-batches (see :func:`trainer`);
  values ``(batch, ...)`` in the batch's row order."""
  if sub_batches == 1:
    return objective

  def values(params, key, batch, **kwargs):
    n = data_of(batch).shape[0]
    if n % sub_batches:
      raise ValueError(f"a batch of {n} rows does not split into sub_batches={sub_batches}")
    m = n // sub_batches
    parts = [jax.tree_util.tree_map(lambda a, i=i: a[i * m:(i + 1) * m], batch)
             for i in range(sub_batches)]
    return jnp.concatenate([objective(params, jax.random.fold_in(key, i), part, **kwargs)
                            for i, part in enumerate(parts)])

  return values


def _as_float(batch):
  """x as float32 (data sets are often stored as uint8 or bool); side fields unchanged."""
  if isinstance(batch, Batch):
    return batch._replace(x=batch.x.astype(jnp.float32))
  return batch.astype(jnp.float32)


def _take(data, idx: Array):
  """Rows ``idx`` of every array. The indices come from a permutation, so they are in range;
  ``mode="clip"`` says so, sparing the default mode's per-entry NaN fill of out-of-range rows
  (a select over the whole batch that XLA otherwise re-fuses into every consumer of x)."""
  return jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0, mode="clip"), data)


def evaluate(bound: Callable, params, key, data, *, batch_size: int = 500):
  """Mean of a bound over a whole data set, batched in one ``lax.scan``; pure and jittable.

  The data set is padded to a multiple of ``batch_size`` and the padding masked out, so every
  example counts once.

  Args:
    bound: ``f(params, key, x) -> Array[batch, ...]`` (e.g. ``jvae.kl_groups``'s
      ``(batch, G)``) or a ``(value, stderr)`` pair of such arrays (e.g.
      ``log_marginal(..., return_stderr=True)``).
    params: model parameters.
    key: PRNG key; each batch gets ``fold_in(key, i)``.
    data: x ``(N, *event)`` or a :class:`jvae.Batch` of arrays with leading axis N (N ≥ 1).
    batch_size: examples per batch (memory bound).
  Returns:
    The mean over the N examples (shape ``bound``'s output without its leading axis), with the
    structure of ``bound``'s output. For a
    ``(value, stderr)`` pair the second entry is the standard error of the mean,
    sqrt(Σ se_i²) / N.
  """
  x = data_of(data)
  if x.ndim < 2:
    raise ValueError(f"data must have shape (N, *event), got {x.shape}")
  n = x.shape[0]
  if n == 0:
    raise ValueError(f"data is empty (shape {tuple(x.shape)}); expected at least one example")
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
  batch_size = min(batch_size, n)
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n

  def split(a):
    a = jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)])
    return a.reshape(num_batches, batch_size, *a.shape[1:])

  batches = _as_float(jax.tree_util.tree_map(split, data))
  first = jax.tree_util.tree_map(lambda a: a[0], batches)
  mask = (jnp.arange(num_batches * batch_size) < n).reshape(num_batches, batch_size)

  probe = jax.eval_shape(bound, params, key, first)
  trailing = (probe[0] if isinstance(probe, tuple) else probe).shape[1:]

  def masked_sum(m, a):
    return jnp.sum(jnp.where(m.reshape(m.shape + (1,) * (a.ndim - 1)), a, 0.0), axis=0)

  def body(total, inputs):
    i, x, m = inputs
    out = bound(params, jax.random.fold_in(key, i), x)
    if isinstance(out, tuple):
      value, se = out
      return (total[0] + masked_sum(m, value), total[1] + masked_sum(m, jnp.square(se))), None
    return (total[0] + masked_sum(m, out), total[1]), None

  zeros = jnp.zeros(trailing)
  (s, s2), _ = jax.lax.scan(body, (zeros, zeros), (jnp.arange(num_batches), batches, mask))
  if isinstance(probe, tuple):
    return s / n, jnp.sqrt(s2) / n
  return s / n
