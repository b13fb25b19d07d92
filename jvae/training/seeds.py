"""The epoch loop over many seeds at once, with per-seed early stopping (layer 5).

Seeds are an axis: every leaf of :class:`FitState` (but ``epoch``) has a leading axis of size
``num_seeds``, and one compiled program trains all of them (``jax.vmap``, or ``lax.map`` over
the plain program on a CPU, optionally split over devices with ``jax.shard_map``). Each seed keeps
its own best parameters on the validation bound, and stops (its state is frozen) once the bound
has not improved for ``patience`` epochs (design: stop when the validation likelihood starts to
fall). A seed's non-finite step is skipped for that seed only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from jvae.training.steps import Trainer, TrainState, evaluate

Array = jax.Array


class FitState(NamedTuple):
  """Training state of N seeds plus early-stopping bookkeeping; a plain pytree.

  Attributes:
    train: stacked :class:`TrainState` (leading axis N).
    best_params: per-seed parameters with the best validation bound so far.
    best_value: ``(N,)`` best validation bound (``-inf`` before the first evaluation).
    best_epoch: ``(N,)`` epoch (1-based) of ``best_params``; 0 = initial params.
    bad_epochs: ``(N,)`` epochs since the last improvement.
    active: ``(N,)`` whether the seed is still training.
    eval_key: ``(N,)`` per-seed key for validation estimates (``fold_in`` the epoch).
    epoch: number of completed epochs (scalar).
  """

  train: TrainState
  best_params: Any
  best_value: Array
  best_epoch: Array
  bad_epochs: Array
  active: Array
  eval_key: Array
  epoch: Array


def seed_keys(seed: int, num_seeds: int) -> Array:
  """Keys for seeds ``seed, seed+1, …``: run i of a multi-seed run equals a 1-seed run of seed+i."""
  return jnp.stack([jax.random.key(seed + i) for i in range(num_seeds)])


# The initialising program runs once, and is mostly unrolled threefry: on a CPU, LLVM's
# optimisations of it cost seconds of compile time that running it never repays (measured on the
# 2-core CPU, 5 seeds: the CLI's mlp 2.4 s → 0.5 s, lvae 4.8 s → 1.3 s). The parameters then
# differ from an optimised program's by at most an ulp or so (max relative 3.1e-7 there).
_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def fit_init(model, trainer: Trainer, keys: Array, x_example: Array) -> FitState:
  """Initialise N seeds from ``keys`` of shape ``(N,)``: each is split into init/train/eval keys."""
  if keys.ndim != 1:
    raise ValueError(f"keys must have shape (num_seeds,), got {keys.shape}")

  def one(key):
    init_key, train_key, eval_key = jax.random.split(key, 3)
    params = model.init(init_key, x_example)
    return trainer.init(params, train_key), params, eval_key

  lowered = jax.jit(jax.vmap(one)).lower(keys)
  options = _INIT_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
  train, params, eval_key = lowered.compile(compiler_options=options)(keys)
  n = keys.shape[0]
  return FitState(train, params, jnp.full((n,), -jnp.inf, jnp.float32), jnp.zeros((n,), jnp.int32),
                  jnp.zeros((n,), jnp.int32), jnp.ones((n,), bool), eval_key,
                  jnp.zeros((), jnp.int32))


def _select(mask: Array, new, old):
  def pick(a, b):
    m = mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim))
    return jnp.where(m, a, b)

  return jax.tree_util.tree_map(pick, new, old)


_CPU_SEED_CHUNK = 1
_CPU_SEED_INTERLEAVE = 4


def _resolve_seed_chunk(seed_chunk: int | str | None) -> int | None:
  """``"auto"`` → :data:`_CPU_SEED_CHUNK` on a CPU backend, None (all seeds at once) elsewhere."""
  if seed_chunk == "auto":
    return _CPU_SEED_CHUNK if jax.default_backend() == "cpu" else None
  if seed_chunk is not None and (not isinstance(seed_chunk, int) or isinstance(seed_chunk, bool)
                                 or seed_chunk < 1):
    raise ValueError(f"seed_chunk must be 'auto', None or an int >= 1, got {seed_chunk!r}")
  return seed_chunk


def _resolve_seed_interleave(seed_interleave: int | str, chunk: int | None,
                             trainer: Trainer) -> int:
  """``"auto"`` → :data:`_CPU_SEED_INTERLEAVE` on a CPU backend with un-batched seeds (chunk 1)
  and a trainer that has ``interleaved_epoch``, else 1."""
  can = chunk == 1 and getattr(trainer, "interleaved_epoch", None) is not None
  if seed_interleave == "auto":
    return _CPU_SEED_INTERLEAVE if can and jax.default_backend() == "cpu" else 1
  if (not isinstance(seed_interleave, int) or isinstance(seed_interleave, bool)
      or seed_interleave < 1):
    raise ValueError(f"seed_interleave must be 'auto' or an int >= 1, got {seed_interleave!r}")
  if seed_interleave > 1 and not can:
    raise ValueError(f"seed_interleave={seed_interleave} interleaves un-batched seeds: it needs "
                     f"seed_chunk=1 (got {chunk!r} after resolving) and a trainer from "
                     "jvae.trainer (one with interleaved_epoch)")
  return seed_interleave


def _nan_like(metrics):
  """Metrics of a skipped epoch: NaN (integers 0), shaped like ``metrics`` (arrays or shapes)."""
  return jax.tree_util.tree_map(
      lambda a: jnp.full(a.shape, jnp.nan if jnp.issubdtype(a.dtype, jnp.floating) else 0,
                         a.dtype), metrics)


def _skipped(trainer: Trainer, state, train):
  """A stopped seed's epoch: its state unchanged, the metrics NaN (integers 0)."""
  return state, _nan_like(jax.eval_shape(trainer.epoch, state, train)[1])


def _stack(outs):
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)


def make_epoch_fn(trainer: Trainer, valid_bound: Callable | None, *, patience: int | None,
                  eval_batch_size: int = 500, seed_chunk: int | str | None = "auto",
                  seed_interleave: int | str = "auto", mesh: Mesh | None = None) -> Callable:
  """A pure ``(FitState, train, valid) -> (FitState, metrics)`` for one epoch of all seeds.

  Args:
    trainer: from :func:`jvae.trainer`.
    valid_bound: ``f(params, key, x)`` for validation and early stopping, or None.
    patience: epochs without improvement before a seed stops; None never stops early.
    eval_batch_size: batch size for validation. The seeds are validated as they are trained
      (``seed_chunk`` at a time; all at once by default off a CPU), so a validation step holds
      about seeds × ``eval_batch_size`` × K decoder outputs for a K-sample bound: lower it for
      many seeds with a large K on an accelerator.
    seed_chunk: how many seeds one ``vmap`` trains at a time (on each device, with ``mesh``).
      None: all of them in one vmap. An int k: ``lax.map`` over chunks of k vmapped seeds
      (``lax.map(..., batch_size=k)``; k = 1 maps the plain single-seed program over the
      seeds), still one compiled program. On a CPU a vmapped matmul is a batched dot, slower per
      seed than the plain one (``benchmarks/seeds.py``). ``"auto"`` (default): 1 on a CPU
      backend, None elsewhere. Results agree with any other choice to float32 round-off.
    seed_interleave: with un-batched seeds (``seed_chunk`` 1), how many seeds' training steps
      share one ``lax.scan`` body (``Trainer.interleaved_epoch``; ``lax.map`` over such groups).
      XLA:CPU then runs one seed's elementwise work beside another's matmuls: faster than
      separate runs on a 2-core CPU (16 seeds in groups of 4: 1.07–1.26× in two side-by-side
      runs; ``benchmarks/seeds.py``), each seed's result bitwise that of its own run; compile
      time grows with the group. ``"auto"`` (default): 4 on a CPU backend where ``seed_chunk``
      resolves to 1, else 1 (off).
    mesh: optional ``jax.sharding.Mesh`` whose first axis carries the seeds: each device trains
      its N / devices seeds (``jax.shard_map``, so seeds never communicate), with ``seed_chunk``
      applied per device. The seed axis of the state must be placed accordingly
      (:func:`jvae.place_fit_state` with ``"seeds"``) and N divisible by the axis size; data is
      replicated. On a CPU, its cores as devices (:func:`jvae.request_cpu_devices` or
      ``JAX_NUM_CPU_DEVICES``, before JAX starts) run seeds concurrently.
  """
  chunk = _resolve_seed_chunk(seed_chunk)
  interleave = _resolve_seed_interleave(seed_interleave, chunk, trainer)

  def local(fn, seeded, shared, group=None):
    """``fn(*seeded_i, *shared)`` for every seed i of ``seeded``'s leading axis, on one device.

    A size-1 axis is squeezed instead: one seed then runs the un-batched program, the same as a
    plain single-seed run (its matmuls avoid a size-1 batch axis, which costs XLA:CPU a
    noticeable share of a step). ``group(seeds, *shared)``, if given, runs a tuple of seeds'
    ``seeded`` side by side (``interleave`` > 1) and returns their outputs as a tuple.
    """
    n = jax.tree_util.tree_leaves(seeded)[0].shape[0]
    if n == 1:
      out = fn(*jax.tree_util.tree_map(lambda a: a[0], seeded), *shared)
      return jax.tree_util.tree_map(lambda a: a[None], out)
    if group is not None and interleave > 1:
      return interleaved(fn, group, seeded, shared, n)
    if chunk is None or chunk >= n:
      return jax.vmap(lambda s: fn(*s, *shared))(seeded)
    return jax.lax.map(lambda s: fn(*s, *shared), seeded,
                       batch_size=chunk if chunk > 1 else None)

  def interleaved(fn, group, seeded, shared, n):
    """``local`` over groups of ``interleave`` seeds (``lax.map``), the remainder last."""
    def run_group(g, size):
      seeds = tuple(jax.tree_util.tree_map(lambda a, j=j: a[j], g) for j in range(size))
      return _stack(group(seeds, *shared))

    groups, rem = divmod(n, interleave)
    cut = groups * interleave
    parts = []
    if groups:
      head = jax.tree_util.tree_map(
          lambda a: a[:cut].reshape(groups, interleave, *a.shape[1:]), seeded)
      out = jax.lax.map(lambda g: run_group(g, interleave), head)
      parts.append(jax.tree_util.tree_map(lambda a: a.reshape(cut, *a.shape[2:]), out))
    if rem:
      tail = jax.tree_util.tree_map(lambda a: a[cut:], seeded)
      parts.append(local(fn, tail, shared) if rem == 1 else run_group(tail, rem))
    return parts[0] if len(parts) == 1 else jax.tree_util.tree_map(
        lambda *xs: jnp.concatenate(xs), *parts)

  def over_seeds(fn, seeded: tuple, shared: tuple, group=None):
    """Maps ``fn`` over the seeds of ``seeded`` (leading axes), ``shared`` the same for all."""
    if mesh is None:
      return local(fn, seeded, shared, group)
    axis = mesh.axis_names[0]
    n, size = jax.tree_util.tree_leaves(seeded)[0].shape[0], mesh.shape[axis]
    if n % size:
      raise ValueError(f"seed-parallel training needs the number of seeds ({n}) to be a "
                       f"multiple of the mesh axis {axis!r} ({size} devices)")
    return jax.shard_map(lambda s, sh: local(fn, s, sh, group), mesh=mesh,
                         in_specs=(PartitionSpec(axis), PartitionSpec()),
                         out_specs=PartitionSpec(axis),
                         # every output is per seed; the per-device program is any model's
                         # (scans with constant initial carries), so varying-ness is not tracked
                         check_vma=False)(seeded, shared)

  def train_one(state, active, train):
    """One seed's epoch, or its state unchanged once it has stopped (a ``lax.cond``: skipped
    un-batched, both sides computed and selected under ``vmap``)."""
    return jax.lax.cond(active, lambda: trainer.epoch(state, train),
                        lambda: _skipped(trainer, state, train))

  def train_group(seeds, train):
    """``train_one`` of each ``(state, active)`` in ``seeds``, their steps interleaved: skipped
    when every one has stopped, else run for all, a stopped seed's result then discarded."""
    states, actives = tuple(s for s, _ in seeds), tuple(a for _, a in seeds)

    def run():
      outs = trainer.interleaved_epoch(states, train)
      return tuple(_select(a, out, (s, _nan_like(out[1])))
                   for a, s, out in zip(actives, states, outs, strict=True))

    shapes = jax.eval_shape(trainer.epoch, states[0], train)[1]  # the same for every seed
    return jax.lax.cond(jnp.any(jnp.stack(actives)), run,
                        lambda: tuple((s, _nan_like(shapes)) for s in states))

  def epoch_fn(fs: FitState, train: Array, valid: Array | None):
    train_state, m = over_seeds(train_one, (fs.train, fs.active), (train,), train_group)
    epoch = fs.epoch + 1
    # A stopped seed's epoch is not run (or, vmapped, run and discarded): report NaN.
    metrics = {"train_bound": jnp.where(fs.active, m["bound"], jnp.nan),
               "nonfinite": jnp.where(fs.active, m["nonfinite"], 0), "beta": m["beta"]}
    if valid_bound is None or valid is None:
      return fs._replace(train=train_state, best_params=train_state.params, epoch=epoch,
                         best_epoch=jnp.where(fs.active, epoch, fs.best_epoch)), metrics

    def val(params, key, valid, epoch):
      return evaluate(valid_bound, params, jax.random.fold_in(key, epoch), valid,
                      batch_size=eval_batch_size)

    v = over_seeds(val, (train_state.params, fs.eval_key), (valid, epoch))
    improved = fs.active & (v > fs.best_value)
    bad = jnp.where(improved, 0, fs.bad_epochs + fs.active.astype(jnp.int32))
    active = fs.active if patience is None else fs.active & (bad < patience)
    fs = FitState(train_state, _select(improved, train_state.params, fs.best_params),
                  jnp.where(improved, v, fs.best_value),
                  jnp.where(improved, epoch, fs.best_epoch), bad, active, fs.eval_key, epoch)
    metrics.update(valid_bound=v, best_valid_bound=fs.best_value, active=active)
    return fs, metrics

  return epoch_fn


def fit(trainer: Trainer, state: FitState, train: Array, valid: Array | None = None, *,
        epochs: int, valid_bound: Callable | None = None, patience: int | None = None,
        eval_batch_size: int = 500, callback: Callable | None = None,
        epoch_fn: Callable | None = None,
        seed_chunk: int | str | None = "auto", seed_interleave: int | str = "auto",
        mesh: Mesh | None = None) -> tuple[FitState, list[dict]]:
  """Train all seeds of ``state`` for up to ``epochs`` epochs (counting those already done).

  One jitted call per epoch (one host sync); stops early when every seed has stopped.

  Args:
    trainer: from :func:`jvae.trainer`.
    state: from :func:`fit_init` (or a restored checkpoint: training resumes at ``state.epoch``).
    train: ``(N, *event)`` training data (device-resident; sharded or replicated as you like).
    valid: optional validation data for early stopping and best-params selection.
    epochs: total number of epochs.
    valid_bound: ``f(params, key, x)``, the validation bound (e.g. ``jvae.elbo(model)``).
    patience: epochs without improvement before a seed stops; None never stops early.
    eval_batch_size: batch size for validation (its memory: see :func:`make_epoch_fn`).
    callback: ``callback(state, record)`` after every epoch (checkpoints, progress bars).
    epoch_fn: a prebuilt (e.g. sharded, jitted) epoch function; default builds and jits one.
    seed_chunk: seeds per vmapped chunk for the default epoch function (see
      :func:`make_epoch_fn`).
    seed_interleave: seeds whose steps share one scan, for the default epoch function (see
      :func:`make_epoch_fn`).
    mesh: for the default epoch function: train the seeds split over this mesh's first axis
      (see :func:`make_epoch_fn`; place ``state`` with :func:`jvae.place_fit_state` first).
  Returns:
    The final state and a list of per-epoch records: host numpy metrics (each ``(N,)``), the
    epoch number, and ``seconds`` and ``steps_per_s`` for the epoch.
  """
  if epochs < 0:
    raise ValueError(f"epochs must be >= 0, got {epochs}")
  if epoch_fn is None:
    epoch_fn = jax.jit(make_epoch_fn(trainer, valid_bound, patience=patience,
                                     eval_batch_size=eval_batch_size, seed_chunk=seed_chunk,
                                     seed_interleave=seed_interleave, mesh=mesh))
  history = []
  steps_per_epoch = None
  while int(state.epoch) < epochs and bool(np.any(np.asarray(state.active))):
    start = time.perf_counter()
    step_before = np.asarray(state.train.step)
    state, metrics = epoch_fn(state, train, valid)
    metrics = jax.device_get(metrics)
    seconds = time.perf_counter() - start
    steps_per_epoch = int(np.max(np.asarray(state.train.step) - step_before))
    record = {"epoch": int(state.epoch), "seconds": seconds,
              "steps_per_s": steps_per_epoch / seconds if seconds > 0 else float("nan"),
              **{k: np.asarray(v) for k, v in metrics.items()}}
    history.append(record)
    if callback is not None:
      callback(state, record)
  return state, history


def summarize(values, confidence: float = 0.95) -> dict:
  """Mean, standard deviation and a Student-t confidence interval over seeds.

  Args:
    values: ``(N,)`` one final metric per seed.
  Returns:
    ``{"mean", "std", "ci_low", "ci_high", "n"}``; with N = 1 the interval is the point itself.
  """
  from scipy import stats  # scipy comes with scikit-learn

  v = np.asarray(values, np.float64).reshape(-1)
  n = v.size
  mean = float(v.mean())
  std = float(v.std(ddof=1)) if n > 1 else 0.0
  half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std / np.sqrt(n)) if n > 1 else 0.0
  return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "n": n,
          "confidence": confidence}
