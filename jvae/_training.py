"""Training as pure functions: ``init``/``step``/``epoch`` over a train-state pytree (layer 5).

The factory :func:`trainer` closes over an objective ``f(params, key, x)`` and an optax optimizer
and returns a :class:`Trainer` of pure functions (like optax's ``GradientTransformation`` or
blackjax's ``init``/``step``). An epoch is one ``lax.scan`` over the batches of a shuffled,
device-resident data set, so the host syncs once per epoch. Seeds are an axis: ``jax.vmap`` the
functions over stacked states (see :func:`jvae.fit`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jvae.stabilizers import linear_warmup

Array = jax.Array


class TrainState(NamedTuple):
  """Everything that determines the rest of a run; a plain pytree.

  Attributes:
    params: model parameters.
    opt_state: optimizer state.
    step: number of steps taken (int32 scalar), skipped ones included.
    key: PRNG key for shuffling and sampling; split at every use.
    nonfinite: number of steps skipped because the loss or a gradient was not finite.
  """

  params: Any
  opt_state: Any
  step: Array
  key: Array
  nonfinite: Array


class Trainer(NamedTuple):
  """Pure training functions bound to an objective and an optimizer.

  Attributes:
    init: ``(params, key) -> TrainState``.
    step: ``(state, x) -> (state, metrics)`` for one batch x of shape ``(batch, *event)``.
    epoch: ``(state, data) -> (state, metrics)``: shuffle ``data`` ``(N, *event)``, run
      ``N // batch_size`` steps in one ``lax.scan``; metrics are epoch means (``loss``, ``bound``)
      and counts (``nonfinite``).
  """

  init: Callable[..., TrainState]
  step: Callable[..., tuple[TrainState, dict]]
  epoch: Callable[..., tuple[TrainState, dict]]


def _all_finite(tree) -> Array:
  leaves = [jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def trainer(objective: Callable, optimizer: optax.GradientTransformation, *, batch_size: int,
            warmup_steps: int = 0, beta: float = 1.0,
            batch_sharding: jax.sharding.Sharding | None = None) -> Trainer:
  """Build pure ``init``/``step``/``epoch`` functions that maximise ``objective``.

  The loss is ``-mean(objective(params, key, x, beta=β(step)))``. A step whose loss or gradient
  is not finite leaves params and optimizer state unchanged and increments ``state.nonfinite``.

  Args:
    objective: ``f(params, key, x, *, beta) -> Array[batch]``, e.g. ``jvae.elbo(model)``.
    optimizer: an optax transformation, e.g. ``optax.adam(1e-3)`` or ``optax.adamax(1e-3)``.
    batch_size: examples per step (static).
    warmup_steps: KL warm-up length N: β rises linearly from 0 to ``beta`` over N steps
      (Bowman et al. 2015; Sønderby et al. 2016); 0 keeps β = ``beta`` throughout.
    beta: the final (or constant) β.
    batch_sharding: optional sharding of each batch over a device mesh (data parallelism); the
      gradient reduction across devices is then done by XLA.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  schedule = linear_warmup(warmup_steps, beta_max=beta)

  def init(params, key) -> TrainState:
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32), key,
                      jnp.zeros((), jnp.int32))

  def step(state: TrainState, x: Array):
    key, sub = jax.random.split(state.key)
    x = x.astype(jnp.float32)
    if batch_sharding is not None:
      x = jax.lax.with_sharding_constraint(x, batch_sharding)
    b = schedule(state.step)

    def loss_fn(params):
      return -jnp.mean(objective(params, sub, x, beta=b))

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    ok = jnp.isfinite(loss) & _all_finite(grads)

    def apply_update(_):
      updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
      return optax.apply_updates(state.params, updates), opt_state

    # lax.cond, not an elementwise select: a select keeps old and new params and moments alive
    # together and costs ~10% of a step in copies. Under vmap (seeds) it becomes a select anyway.
    params, opt_state = jax.lax.cond(ok, apply_update,
                                     lambda _: (state.params, state.opt_state), None)
    new_state = TrainState(params, opt_state, state.step + 1, key,
                           state.nonfinite + (~ok).astype(jnp.int32))
    metrics = {"loss": jnp.where(ok, loss, 0.0), "finite": ok.astype(jnp.float32),
               "beta": jnp.asarray(b, jnp.float32)}
    return new_state, metrics

  def epoch(state: TrainState, data: Array):
    n = data.shape[0]
    num_batches = n // batch_size
    if num_batches < 1:
      raise ValueError(f"batch_size {batch_size} is larger than the data set ({n} examples)")
    key, perm_key = jax.random.split(state.key)
    idx = jax.random.permutation(perm_key, n)[: num_batches * batch_size]
    idx = idx.reshape(num_batches, batch_size)
    state = state._replace(key=key)
    before = state.nonfinite

    def body(s, batch_idx):
      return step(s, jnp.take(data, batch_idx, axis=0))

    state, m = jax.lax.scan(body, state, idx)
    finite = jnp.maximum(jnp.sum(m["finite"]), 1.0)
    loss = jnp.sum(m["loss"]) / finite
    return state, {"loss": loss, "bound": -loss, "nonfinite": state.nonfinite - before,
                   "beta": m["beta"][-1]}

  return Trainer(init, step, epoch)


def evaluate(bound: Callable, params, key, data: Array, *, batch_size: int = 500):
  """Mean of a bound over a whole data set, batched in one ``lax.scan``; pure and jittable.

  The data set is padded to a multiple of ``batch_size`` and the padding masked out, so every
  example counts once.

  Args:
    bound: ``f(params, key, x) -> Array[batch]`` or a tuple of such arrays (e.g.
      ``log_marginal(..., return_stderr=True)``).
    params: model parameters.
    key: PRNG key; each batch gets ``fold_in(key, i)``.
    data: ``(N, *event)``.
    batch_size: examples per batch (memory bound).
  Returns:
    The mean over the N examples, with the structure of ``bound``'s output. For a
    ``(value, stderr)`` pair the second entry is the standard error of the mean,
    sqrt(Σ se_i²) / N.
  """
  if data.ndim < 2:
    raise ValueError(f"data must have shape (N, *event), got {data.shape}")
  n = data.shape[0]
  batch_size = min(batch_size, n)
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n
  padded = jnp.concatenate([data, jnp.zeros((pad, *data.shape[1:]), data.dtype)])
  batches = padded.reshape(num_batches, batch_size, *data.shape[1:]).astype(jnp.float32)
  mask = (jnp.arange(num_batches * batch_size) < n).reshape(num_batches, batch_size)

  def body(total, inputs):
    i, x, m = inputs
    out = bound(params, jax.random.fold_in(key, i), x)
    if isinstance(out, tuple):
      value, se = out
      return (total[0] + jnp.sum(jnp.where(m, value, 0.0)),
              total[1] + jnp.sum(jnp.where(m, jnp.square(se), 0.0))), None
    return (total[0] + jnp.sum(jnp.where(m, out, 0.0)), total[1]), None

  (s, s2), _ = jax.lax.scan(body, (jnp.zeros(()), jnp.zeros(())),
                            (jnp.arange(num_batches), batches, mask))
  probe = jax.eval_shape(bound, params, key, batches[0])
  if isinstance(probe, tuple):
    return s / n, jnp.sqrt(s2) / n
  return s / n
