"""Steady-state training throughput: jvae against a hand-written Flax + optax VAE.

The model is Burda et al.'s (2015) one-stochastic-layer VAE: 784-200-200-50 tanh encoder, mirrored
decoder, Bernoulli likelihood, trained on the single-sample ELBO with the analytic KL, Adam 1e-3,
batch 100, one epoch compiled as a ``lax.scan``. Both versions get the same device-resident data,
batch size and steps per epoch, and both donate their train state. They are compiled ahead of
time, then timed epoch by epoch, alternating (``_harness.alternate``) so that load from other
processes hits both alike. Goal: jvae / hand-written steps/s >= 0.97 (the abstraction is free).

    JVAE_DATA_DIR=/path/to/data python -m benchmarks.throughput [--quick] [--rounds R]
        [--epoch-steps S] [--out FILE.json]

The headline rates are wall-clock medians; the record also holds every epoch's process CPU time
(steadier when other jobs share the machine; pin with ``taskset -c 0`` for the steadiest).
"""

from __future__ import annotations

import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jvae

from benchmarks import _harness as h

BATCH_SIZE = 100
LEARNING_RATE = 1e-3
HIDDEN = 200
LATENT = 50
MIN_SCALE = 1e-4  # jvae's GaussianPosterior floor on σ.
GOALS = [h.Goal("ratio", ">=", 0.97, "jvae / hand-written steps/s")]


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


def jvae_setup(data, key, *, sub_batches: int = 1, unroll: int = 1):
  model = jvae.burda2015(event_shape=(data.shape[1],))
  tr = jvae.trainer(jvae.elbo(model), optax.adam(LEARNING_RATE), batch_size=BATCH_SIZE,
                    sub_batches=sub_batches, unroll=unroll)
  init_key, train_key = jax.random.split(key)
  params = model.init(init_key, data[:BATCH_SIZE])
  return tr.epoch, tr.init(params, train_key)


# --------------------------------------------------------------------------------------------


def num_params(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def parse_args(argv=None):
  p = h.parser(__doc__)
  p.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
  p.add_argument("--epoch-steps", type=int, default=None,
                 help="steps per epoch, using the first steps*batch training examples "
                      "(default: a full epoch; 100 if --quick)")
  p.add_argument("--warmup", type=int, default=1,
                 help="untimed epochs of each version after compiling (default 1)")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  if args.epoch_steps is None and args.quick:
    args.epoch_steps = 100
  if args.rounds < 1 or (args.epoch_steps is not None and args.epoch_steps < 1):
    p.error("--rounds and --epoch-steps must be >= 1")
  if args.warmup < 0:
    p.error("--warmup must be >= 0")
  return args


def training_data(steps: int | None):
  """The first ``steps`` batches of the training set on the device (all of it for None), its
  name and the number of steps; exits with a message when the set is too small."""
  train, _, test, name = h.load_mnist_or_random()
  max_steps = train.shape[0] // BATCH_SIZE
  steps = max_steps if steps is None else steps
  if steps > max_steps:
    raise SystemExit(f"error: {steps} steps need {steps * BATCH_SIZE} examples; the training "
                     f"set has {train.shape[0]} ({max_steps} steps)")
  return np.ascontiguousarray(train[: steps * BATCH_SIZE], np.float32), test, name, steps


def main(argv=None) -> int:
  args = parse_args(argv)
  train, _, data_name, steps = training_data(args.epoch_steps)
  data = jax.device_put(jnp.asarray(train))
  h.log(f"throughput on {jax.default_backend()}: {data_name}, {data.shape[0]} x {data.shape[1]}, "
        f"batch {BATCH_SIZE}, {steps} steps per epoch, {args.rounds} rounds")

  key_j, key_h = jax.random.split(jax.random.key(args.seed))
  versions = {"jvae": jvae_setup(data, key_j), "hand": hand_setup(data, key_h)}
  sizes = {name: num_params(state[0]) for name, (_, state) in versions.items()}
  if sizes["jvae"] != sizes["hand"]:
    h.log(f"error: the two models differ in size ({sizes}); they are not the same architecture")
    return 2
  runs, compile_s = {}, {}
  for name, (epoch_fn, state) in versions.items():
    compiled, compile_s[name] = h.compile_ahead(epoch_fn, state, data, donate=True)
    runs[name] = h.Carry(compiled, state, data)
    h.log(f"compile {name}: {compile_s[name]:.2f} s")

  rounds = h.alternate(runs, rounds=args.rounds, warmup=args.warmup, on_round=lambda r, t: h.log(
      f"round {r + 1}: " + ", ".join(f"{n} {steps / t.wall[n][-1]:.1f} steps/s" for n in runs)))
  rate = {name: steps / rounds.median(name) for name in runs}
  ratio = rate["jvae"] / rate["hand"]
  bounds = {name: float(run.out["bound"]) for name, run in runs.items()}
  finite = all(np.isfinite(b) for b in bounds.values())
  h.log(f"median steps/s: jvae {rate['jvae']:.1f}, hand-written {rate['hand']:.1f}; final "
        f"training bounds {bounds} ({'finite' if finite else 'NOT FINITE'})")
  goals = h.check(GOALS, {"ratio": ratio})
  h.emit(h.record("throughput", {
      "jvae_steps_per_s": rate["jvae"], "hand_steps_per_s": rate["hand"], "ratio": ratio,
      "compile_s": compile_s, **rounds.as_record(), "rounds": args.rounds,
      "warmup_epochs": args.warmup, "steps_per_epoch": steps, "batch_size": BATCH_SIZE,
      "num_params": sizes["jvae"], "data": data_name, "final_bound": bounds}, goals=goals),
      args.out)
  if not finite:
    h.log("error: a final training bound is not finite")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
