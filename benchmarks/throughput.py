"""Steady-state training throughput: jvae against a hand-written Flax + optax VAE.

The model is Burda et al.'s (2015) one-stochastic-layer VAE: 784-200-200-50 tanh encoder, mirrored
decoder, Bernoulli likelihood, trained on the single-sample ELBO with the analytic KL, Adam 1e-3,
batch 100, one epoch compiled as a ``lax.scan``. Both versions get the same device-resident data,
batch size and steps per epoch, and both donate their train state. They are compiled first, then
timed epoch by epoch, alternating (the order flips each round) so that load from other processes
hits both alike. The goal is ``ratio = jvae / hand-written >= 0.97``.

Usage::

  JVAE_DATA_DIR=/path/to/data python benchmarks/throughput.py [--quick] [--rounds R]
      [--epoch-steps S] [--out FILE.json]

Human-readable lines go to stderr; the last line on stdout is the JSON record. The headline
rates are wall-clock; the record also holds each epoch's process CPU time and the CPU-time ratio,
which is steadier when other jobs share the machine (pin with ``taskset -c 0`` for the steadiest).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jvae

try:  # run as a module: python -m benchmarks.throughput
  from benchmarks import _common
except ImportError:  # run as a script: python benchmarks/throughput.py
  import _common

BATCH_SIZE = 100
LEARNING_RATE = 1e-3
HIDDEN = 200
LATENT = 50
MIN_SCALE = 1e-4  # jvae's GaussianPosterior floor on σ.
GOAL = 0.97


# --------------------------------------------------------------------------------------------
# The hand-written version: what a researcher would write without a library.
# --------------------------------------------------------------------------------------------


class HandEncoder(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.tanh(nn.Dense(HIDDEN)(x))
    h = nn.tanh(nn.Dense(HIDDEN)(h))
    mu = nn.Dense(LATENT)(h)
    sigma = nn.softplus(nn.Dense(LATENT)(h)) + MIN_SCALE
    return mu, sigma


class HandDecoder(nn.Module):
  out_dim: int

  @nn.compact
  def __call__(self, z):
    h = nn.tanh(nn.Dense(HIDDEN)(z))
    h = nn.tanh(nn.Dense(HIDDEN)(h))
    return nn.Dense(self.out_dim)(h)  # Bernoulli logits


class HandVAE(nn.Module):
  out_dim: int

  def setup(self):
    self.encoder = HandEncoder()
    self.decoder = HandDecoder(self.out_dim)

  def __call__(self, x, eps):
    mu, sigma = self.encoder(x)
    z = mu + sigma * eps
    return mu, sigma, self.decoder(z)


def make_hand_epoch(model: HandVAE, optimizer, batch_size: int):
  """``epoch(state, data)`` with ``state = (params, opt_state, key)``; one shuffled lax.scan."""

  def loss_fn(params, key, x):
    eps = jax.random.normal(key, (x.shape[0], LATENT))
    mu, sigma, logits = model.apply(params, x, eps)
    log_lik = jnp.sum(x * jax.nn.log_sigmoid(logits) + (1.0 - x) * jax.nn.log_sigmoid(-logits),
                      axis=-1)
    kl = 0.5 * jnp.sum(jnp.square(mu) + jnp.square(sigma) - 1.0 - 2.0 * jnp.log(sigma), axis=-1)
    return -jnp.mean(log_lik - kl)

  def epoch(state, data):
    params, opt_state, key = state
    n = data.shape[0]
    num_batches = n // batch_size
    key, perm_key = jax.random.split(key)
    idx = jax.random.permutation(perm_key, n)[: num_batches * batch_size]
    idx = idx.reshape(num_batches, batch_size)

    def body(carry, batch_idx):
      params, opt_state, key = carry
      key, sub = jax.random.split(key)
      x = jnp.take(data, batch_idx, axis=0)
      loss, grads = jax.value_and_grad(loss_fn)(params, sub, x)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      return (params, opt_state, key), loss

    (params, opt_state, key), losses = jax.lax.scan(body, (params, opt_state, key), idx)
    loss = jnp.mean(losses)
    return (params, opt_state, key), {"loss": loss, "bound": -loss}

  return epoch


def hand_setup(data, key):
  model = HandVAE(data.shape[1])
  optimizer = optax.adam(LEARNING_RATE)
  init_key, train_key = jax.random.split(key)
  params = model.init(init_key, data[:BATCH_SIZE], jnp.zeros((BATCH_SIZE, LATENT)))
  state = (params, optimizer.init(params), train_key)
  return make_hand_epoch(model, optimizer, BATCH_SIZE), state


# --------------------------------------------------------------------------------------------
# The jvae version.
# --------------------------------------------------------------------------------------------


def jvae_setup(data, key):
  model = jvae.burda2015(event_shape=(data.shape[1],))
  tr = jvae.trainer(jvae.elbo(model), optax.adam(LEARNING_RATE), batch_size=BATCH_SIZE)
  init_key, train_key = jax.random.split(key)
  params = model.init(init_key, data[:BATCH_SIZE])
  return tr.epoch, tr.init(params, train_key)


# --------------------------------------------------------------------------------------------


def num_params(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def compile_epoch(epoch_fn, state, data):
  """AOT-compile ``epoch_fn`` with the state donated; returns (compiled, lower_s, compile_s)."""
  start = time.perf_counter()
  lowered = jax.jit(epoch_fn, donate_argnums=0).lower(state, data)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  return compiled, lowered_at - start, time.perf_counter() - lowered_at


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--rounds", type=int, default=None,
                 help="timed rounds of [jvae epoch, hand-written epoch] (default 5)")
  p.add_argument("--epoch-steps", type=int, default=None,
                 help="steps per epoch, using the first steps*batch training examples "
                      "(default: a full epoch; 100 if --quick)")
  p.add_argument("--warmup", type=int, default=1,
                 help="untimed epochs of each version after compiling (default 1)")
  p.add_argument("--quick", action="store_true", help="short run: 100 steps per epoch, 5 rounds")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="also write the JSON record to this file")
  args = p.parse_args(argv)
  if args.rounds is None:
    args.rounds = 5
  if args.epoch_steps is None and args.quick:
    args.epoch_steps = 100
  if args.rounds < 1:
    p.error("--rounds must be >= 1")
  if args.epoch_steps is not None and args.epoch_steps < 1:
    p.error("--epoch-steps must be >= 1")
  if args.warmup < 0:
    p.error("--warmup must be >= 0")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  log = _common.log
  info = _common.machine_info()
  log(f"throughput: jax {info['versions']['jax']} on {info['jax_backend']} "
      f"({info['device_kind']}), {info['cpu_usable']} usable CPUs")

  train, _, _, data_name = _common.load_mnist_or_random()
  max_steps = train.shape[0] // BATCH_SIZE
  steps = max_steps if args.epoch_steps is None else args.epoch_steps
  if steps > max_steps:
    log(f"error: --epoch-steps {steps} needs {steps * BATCH_SIZE} examples; "
        f"the training set has {train.shape[0]} ({max_steps} steps)")
    return 2
  data = jax.device_put(jnp.asarray(train[: steps * BATCH_SIZE], jnp.float32))
  log(f"data: {data_name}, {data.shape[0]} x {data.shape[1]}, batch {BATCH_SIZE}, "
      f"{steps} steps per epoch, {args.rounds} rounds")

  key_j, key_h = jax.random.split(jax.random.key(args.seed))
  versions = {"jvae": jvae_setup(data, key_j), "hand": hand_setup(data, key_h)}
  sizes = {name: num_params(state[0]) for name, (_, state) in versions.items()}
  log(f"parameters: jvae {sizes['jvae']}, hand-written {sizes['hand']}")
  if sizes["jvae"] != sizes["hand"]:
    log("error: the two models differ in size; they are not the same architecture")
    return 2

  fns, states, compile_s = {}, {}, {}
  for name, (epoch_fn, state) in versions.items():
    fns[name], lower_s, comp_s = compile_epoch(epoch_fn, state, data)
    states[name] = state
    compile_s[name] = {"lower_s": lower_s, "compile_s": comp_s, "total_s": lower_s + comp_s}
    log(f"compile {name:>4}: trace+lower {lower_s:.2f} s, XLA compile {comp_s:.2f} s")

  metrics = {}
  for i in range(args.warmup):
    for name in ("jvae", "hand"):
      (states[name], metrics[name]), dt = _common.timeit_epoch(fns[name], states[name], data)
      log(f"warm-up {i + 1} {name:>4}: {dt:.2f} s ({steps / dt:.1f} steps/s)")

  times = {"jvae": [], "hand": []}
  cpu_times = {"jvae": [], "hand": []}
  for r in range(args.rounds):
    order = ("jvae", "hand") if r % 2 == 0 else ("hand", "jvae")
    for name in order:
      (states[name], metrics[name]), dt, cpu = _common.timeit_epoch(
          fns[name], states[name], data, with_cpu=True)
      times[name].append(dt)
      cpu_times[name].append(cpu)
    log(f"round {r + 1}/{args.rounds}: " + ", ".join(
        f"{name} {times[name][-1]:.3f} s ({steps / times[name][-1]:.1f} steps/s, "
        f"cpu {cpu_times[name][-1]:.3f} s)" for name in ("jvae", "hand")))

  rate = {name: steps / statistics.median(ts) for name, ts in times.items()}
  ratio = rate["jvae"] / rate["hand"]
  per_round = [th / tj for tj, th in zip(times["jvae"], times["hand"], strict=True)]
  ratio_best = min(times["hand"]) / min(times["jvae"])  # fastest epochs: least disturbed
  cpu_ratio = statistics.median(cpu_times["hand"]) / statistics.median(cpu_times["jvae"])
  bounds = {name: float(metrics[name]["bound"]) for name in times}
  finite = all(np.isfinite(b) for b in bounds.values())
  epochs = args.warmup + args.rounds
  log(f"final training bound after {epochs} epochs: jvae {bounds['jvae']:.3f}, "
      f"hand-written {bounds['hand']:.3f} ({'finite' if finite else 'NOT FINITE'})")
  log(f"median steps/s: jvae {rate['jvae']:.1f}, hand-written {rate['hand']:.1f}, "
      f"ratio {ratio:.3f} (per round {min(per_round):.3f}..{max(per_round):.3f}; "
      f"goal >= {GOAL})")
  log(f"ratio of the fastest epochs: {ratio_best:.3f}; ratio of median CPU times: {cpu_ratio:.3f}")

  record = {
      "benchmark": "throughput",
      "jvae_steps_per_s": rate["jvae"],
      "hand_steps_per_s": rate["hand"],
      "ratio": ratio,
      "ratio_per_round": per_round,
      "ratio_best": ratio_best,
      "goal_ratio": GOAL,
      "compile_s": compile_s,
      "epoch_s": times,
      "cpu_ratio": cpu_ratio,
      "epoch_cpu_s": cpu_times,
      "rounds": args.rounds,
      "warmup_epochs": args.warmup,
      "steps_per_epoch": steps,
      "batch_size": BATCH_SIZE,
      "num_examples": int(data.shape[0]),
      "num_params": sizes["jvae"],
      "data": data_name,
      "final_bound": bounds,
      "bounds_finite": finite,
      **info,
  }
  _common.emit(record, args.out)
  if not finite:
    log("error: a final training bound is not finite")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
