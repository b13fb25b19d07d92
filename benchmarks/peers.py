"""Peers: jvae against other ways to train the same VAE, measured alternately in one run.

The model and protocol are Burda et al.'s (2015) one-stochastic-layer VAE: 784-200-200-50 tanh
encoder with a factorized Gaussian q(z|x) (σ = softplus(·) + 1e-4), mirrored decoder, Bernoulli
likelihood, single-sample ELBO, Adam 1e-3, batch 100, statically binarized MNIST. The
implementations (``--impls``):

  jvae                ``jvae.trainer(jvae.elbo(burda2015()), optax.adam)``: one epoch = one
                      ``lax.scan`` (analytic KL).
  flax_optax          the hand-written Flax + optax model and scanned epoch of
                      ``benchmarks/throughput.py`` (imported from there, not duplicated; analytic
                      KL).
  numpyro_trace_elbo  NumPyro SVI with ``flax_module`` encoder (guide) and decoder (model),
                      ``Trace_ELBO`` (Monte-Carlo KL), the optax Adam through
                      ``optax_to_numpyro``; the epoch is a jitted ``lax.scan`` over ``svi.update``.
  numpyro_meanfield   the same with ``TraceMeanField_ELBO`` (analytic KL).
  torch_eager         PyTorch eager ``nn.Module``s, ``torch.optim.Adam``, BCE-with-logits + analytic
                      KL, a plain Python loop over batches (only when ``import torch`` works; the
                      optional ``torch`` extra). Initialised with the weights of a Flax init so
                      that every implementation starts from the same distribution of weights.

Protocol: every implementation trains on the same first ``--steps`` × 100 training images for the
same number of steps per epoch. The JAX ones are compiled ahead of time first (``compile_s`` is
trace + lower + XLA compile), then each runs ``--warmup`` untimed epochs (the first one's time is
``first_epoch_s``; for PyTorch that is its whole warm-up), then ``--rounds`` timed epochs each,
the order of the implementations rotating every round so that load from other processes hits all
alike. steps/s is the median over rounds. All get the same total number of steps.

Test ELBO: every implementation's trained parameters are converted into one common layout and
evaluated by one function (single sample, analytic KL, the same ε for all from a fixed key, the
mean over all test images), so the number is the same metric for all. Each converter is checked
against the implementation's own forward pass (``convert_max_abs_err``). jvae's own
``jvae.elbo`` on the test set is reported alongside as a cross-check.

Goals (2-core CPU): jvae ≥ 1.1× the fastest JAX peer and ≥ 1.6× PyTorch eager in steps/s.

Usage::

  JVAE_DATA_DIR=/path/to/data python -m benchmarks.peers [--quick] [--steps S] [--rounds R]
      [--impls jvae flax_optax ...] [--out FILE.json]

Human-readable lines go to stderr; the last line on stdout is the JSON record.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jvae

try:  # run as a module: python -m benchmarks.peers
  from benchmarks import _common, throughput
except ImportError:  # run as a script: python benchmarks/peers.py
  import _common
  import throughput

BATCH_SIZE = throughput.BATCH_SIZE
LATENT = throughput.LATENT
LEARNING_RATE = throughput.LEARNING_RATE
MIN_SCALE = throughput.MIN_SCALE
HandEncoder = throughput.HandEncoder
HandDecoder = throughput.HandDecoder
HandVAE = throughput.HandVAE

JAX_IMPLS = ("jvae", "flax_optax", "numpyro_trace_elbo", "numpyro_meanfield")
ALL_IMPLS = (*JAX_IMPLS, "torch_eager")
GOAL_VS_JAX = 1.1
GOAL_VS_TORCH = 1.6
EVAL_SEED = 1234  # the fixed key of the common test-ELBO evaluation
CONVERT_TOL = 1e-3  # max |own forward − common forward| before a conversion counts as wrong
HIDDEN = throughput.HIDDEN

# The common parameter layout: layer name -> (W of shape (in, out), b), float32 numpy arrays.
LAYERS = ("enc0", "enc1", "loc", "scale", "dec0", "dec1", "logits")


# --------------------------------------------------------------------------------------------
# The common evaluation: one forward pass for every implementation's converted parameters.
# --------------------------------------------------------------------------------------------


def canonical_forward(c, x, eps):
  """``(μ, σ, logits)`` of the common layout ``c``, with z = μ + σ ε."""

  def dense(name, h):
    w, b = c[name]
    return h @ w + b

  h = jnp.tanh(dense("enc1", jnp.tanh(dense("enc0", x))))
  mu = dense("loc", h)
  sigma = jax.nn.softplus(dense("scale", h)) + MIN_SCALE
  g = jnp.tanh(dense("dec1", jnp.tanh(dense("dec0", mu + sigma * eps))))
  return mu, sigma, dense("logits", g)


@jax.jit
def common_elbo(c, x, eps):
  """Mean single-sample ELBO with the analytic KL: log p(x|z) − KL(q(z|x) ‖ N(0, I))."""
  mu, sigma, logits = canonical_forward(c, x, eps)
  log_lik = jnp.sum(x * logits - jax.nn.softplus(logits), axis=-1)
  kl = 0.5 * jnp.sum(jnp.square(mu) + jnp.square(sigma) - 1.0 - 2.0 * jnp.log(sigma), axis=-1)
  return jnp.mean(log_lik - kl)


def _wb(dense) -> tuple[np.ndarray, np.ndarray]:
  return (np.asarray(dense["kernel"], np.float32), np.asarray(dense["bias"], np.float32))


def _hand_canonical(enc, dec) -> dict:
  """The common layout from the ``params`` of throughput.HandEncoder / HandDecoder."""
  names = ("enc0", "enc1", "loc", "scale")
  out = {name: _wb(enc[f"Dense_{i}"]) for i, name in enumerate(names)}
  out.update({name: _wb(dec[f"Dense_{i}"]) for i, name in enumerate(("dec0", "dec1", "logits"))})
  return out


# --------------------------------------------------------------------------------------------
# The implementations. Each has compile() -> seconds | None, epoch() -> seconds, canonical(),
# own_forward(x) -> (μ, σ, logits at z = μ) by its own code, and train_bound (last epoch's mean).
# --------------------------------------------------------------------------------------------


class JaxImpl:
  """An ``epoch(state, data) -> (state, metrics)`` function, AOT-compiled with the state donated."""

  def __init__(self, name, epoch_fn, state, data, canonical_fn, forward_fn):
    self.name = name
    self._epoch_fn, self.state, self._data = epoch_fn, state, data
    self._canonical_fn, self._forward_fn = canonical_fn, forward_fn
    self._compiled = None
    self.train_bound = float("nan")

  def compile(self) -> float:
    self._compiled, lower_s, compile_s = throughput.compile_epoch(self._epoch_fn, self.state,
                                                                  self._data)
    return lower_s + compile_s

  def epoch(self) -> float:
    (self.state, metrics), dt = _common.timeit_epoch(self._compiled, self.state, self._data)
    self.train_bound = float(metrics["bound"])
    return dt

  def canonical(self) -> dict:
    return self._canonical_fn(self.state)

  def own_forward(self, x):
    return tuple(np.asarray(a) for a in self._forward_fn(self.state, x))


def setup_jvae(data, key) -> JaxImpl:
  model = jvae.burda2015(event_shape=(data.shape[1],))
  epoch_fn, state = throughput.jvae_setup(data, key)

  def canonical(state):
    p = state.params["params"]
    enc, dec = p["encoder"], p["decoder"]
    return {"enc0": _wb(enc["network"]["dense_0"]), "enc1": _wb(enc["network"]["dense_1"]),
            "loc": _wb(enc["head"]["loc"]), "scale": _wb(enc["head"]["scale"]),
            "dec0": _wb(dec["network"]["dense_0"]), "dec1": _wb(dec["network"]["dense_1"]),
            "logits": _wb(dec["head"]["logits"])}

  def forward(state, x):
    q = model.apply(state.params, x, method=jvae.VAE.encode)
    px = model.apply(state.params, q.loc, method=jvae.VAE.decode)
    return q.loc, q.scale_diag, px.distribution.logits

  impl = JaxImpl("jvae", epoch_fn, state, data, canonical, forward)
  impl.model = model
  return impl


def setup_flax_optax(data, key) -> JaxImpl:
  epoch_fn, state = throughput.hand_setup(data, key)
  module = HandVAE(data.shape[1])

  def canonical(state):
    p = state[0]["params"]
    return _hand_canonical(p["encoder"], p["decoder"])

  def forward(state, x):
    return module.apply(state[0], x, jnp.zeros((x.shape[0], LATENT), x.dtype))

  return JaxImpl("flax_optax", epoch_fn, state, data, canonical, forward)


def setup_numpyro(data, key, *, meanfield: bool) -> JaxImpl:
  """NumPyro SVI: flax_module decoder in the model, flax_module encoder in the guide."""
  import numpyro
  import numpyro.distributions as dist
  from numpyro.contrib.module import flax_module
  from numpyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
  from numpyro.optim import optax_to_numpyro

  dim = data.shape[1]
  encoder_module, decoder_module = HandEncoder(), HandDecoder(dim)

  def model(x):
    decoder = flax_module("decoder", decoder_module, input_shape=(x.shape[0], LATENT))
    with numpyro.plate("data", x.shape[0]):
      z = numpyro.sample("z", dist.Normal(jnp.zeros(LATENT), 1.0).to_event(1))
      numpyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

  def guide(x):
    encoder = flax_module("encoder", encoder_module, input_shape=(x.shape[0], dim))
    mu, sigma = encoder(x)
    with numpyro.plate("data", x.shape[0]):
      numpyro.sample("z", dist.Normal(mu, sigma).to_event(1))

  # The loss is the sum over the batch (a plain plate), not the mean: Adam is invariant to that
  # constant factor (up to its ε = 1e-8), so the updates match the mean-loss peers.
  loss = TraceMeanField_ELBO() if meanfield else Trace_ELBO()
  svi = SVI(model, guide, optax_to_numpyro(optax.adam(LEARNING_RATE)), loss)
  init_key, perm_key = jax.random.split(key)
  svi_state = svi.init(init_key, data[:BATCH_SIZE])

  def epoch(state, data):
    svi_state, key = state
    n = data.shape[0]
    num_batches = n // BATCH_SIZE
    key, sub = jax.random.split(key)
    idx = jax.random.permutation(sub, n)[: num_batches * BATCH_SIZE]
    idx = idx.reshape(num_batches, BATCH_SIZE)

    def body(s, batch_idx):
      return svi.update(s, jnp.take(data, batch_idx, axis=0))

    svi_state, losses = jax.lax.scan(body, svi_state, idx)
    return (svi_state, key), {"bound": -jnp.mean(losses) / BATCH_SIZE}

  def canonical(state):
    p = svi.get_params(state[0])
    return _hand_canonical(p["encoder$params"], p["decoder$params"])

  def forward(state, x):
    p = svi.get_params(state[0])
    mu, sigma = encoder_module.apply({"params": p["encoder$params"]}, x)
    return mu, sigma, decoder_module.apply({"params": p["decoder$params"]}, mu)

  name = "numpyro_meanfield" if meanfield else "numpyro_trace_elbo"
  return JaxImpl(name, epoch, (svi_state, perm_key), data, canonical, forward)


def torch_available() -> bool:
  try:
    import torch  # noqa: F401
  except ImportError:
    return False
  return True


class TorchImpl:
  """PyTorch eager: nn.Modules, Adam, a Python loop over the batches of a shuffled epoch."""

  name = "torch_eager"

  def __init__(self, data: np.ndarray, init: dict, seed: int, threads: int | None = None):
    import torch

    torch.set_num_threads(threads or os.cpu_count())
    self.threads = torch.get_num_threads()
    torch.manual_seed(seed)
    self._torch = torch
    self._data = torch.from_numpy(np.ascontiguousarray(data, np.float32))
    self._gen = torch.Generator().manual_seed(seed)
    self.model = _torch_vae(torch, data.shape[1])
    with torch.no_grad():  # start from the same (Flax, LeCun-normal) init distribution
      for name in LAYERS:
        w, b = init[name]
        layer = getattr(self.model, name)
        layer.weight.copy_(torch.from_numpy(np.array(w.T, np.float32)))
        layer.bias.copy_(torch.from_numpy(np.array(b, np.float32)))
    self._opt = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE)
    self.train_bound = float("nan")

  def compile(self) -> None:
    return None  # eager: nothing to compile; the warm-up epoch's time is first_epoch_s

  def epoch(self) -> float:
    torch = self._torch
    start = time.perf_counter()
    n = self._data.shape[0]
    steps = n // BATCH_SIZE
    idx = torch.randperm(n, generator=self._gen)[: steps * BATCH_SIZE].view(steps, BATCH_SIZE)
    total = torch.zeros(())
    for i in range(steps):
      x = self._data[idx[i]]
      self._opt.zero_grad(set_to_none=True)
      loss = self.model.loss(x)
      loss.backward()
      self._opt.step()
      total += loss.detach()
    self.train_bound = -float(total) / steps
    return time.perf_counter() - start

  def canonical(self) -> dict:
    return {name: (getattr(self.model, name).weight.detach().numpy().T.copy(),
                   getattr(self.model, name).bias.detach().numpy().copy()) for name in LAYERS}

  def own_forward(self, x):
    torch = self._torch
    with torch.no_grad():
      mu, sigma = self.model.encode(torch.from_numpy(np.array(x, np.float32)))
      logits = self.model.decode(mu)
    return mu.numpy(), sigma.numpy(), logits.numpy()


def _torch_vae(torch, dim: int):
  nn, F = torch.nn, torch.nn.functional

  class TorchVAE(nn.Module):
    def __init__(self):
      super().__init__()
      self.enc0, self.enc1 = nn.Linear(dim, HIDDEN), nn.Linear(HIDDEN, HIDDEN)
      self.loc, self.scale = nn.Linear(HIDDEN, LATENT), nn.Linear(HIDDEN, LATENT)
      self.dec0, self.dec1 = nn.Linear(LATENT, HIDDEN), nn.Linear(HIDDEN, HIDDEN)
      self.logits = nn.Linear(HIDDEN, dim)

    def encode(self, x):
      h = torch.tanh(self.enc1(torch.tanh(self.enc0(x))))
      return self.loc(h), F.softplus(self.scale(h)) + MIN_SCALE

    def decode(self, z):
      return self.logits(torch.tanh(self.dec1(torch.tanh(self.dec0(z)))))

    def loss(self, x):
      """Mean over the batch of −ELBO: BCE-with-logits summed over pixels + analytic KL."""
      mu, sigma = self.encode(x)
      z = mu + sigma * torch.randn_like(mu)
      rec = F.binary_cross_entropy_with_logits(self.decode(z), x, reduction="sum")
      kl = 0.5 * torch.sum(mu.square() + sigma.square() - 1.0 - 2.0 * torch.log(sigma))
      return (rec + kl) / x.shape[0]

  return TorchVAE()


def build(name: str, data, train_np: np.ndarray, key, args):
  if name == "jvae":
    return setup_jvae(data, key)
  if name == "flax_optax":
    return setup_flax_optax(data, key)
  if name == "numpyro_trace_elbo":
    return setup_numpyro(data, key, meanfield=False)
  if name == "numpyro_meanfield":
    return setup_numpyro(data, key, meanfield=True)
  if name == "torch_eager":
    init = HandVAE(data.shape[1]).init(key, data[:BATCH_SIZE],
                                       jnp.zeros((BATCH_SIZE, LATENT)))["params"]
    return TorchImpl(train_np, _hand_canonical(init["encoder"], init["decoder"]), args.seed,
                     args.torch_threads)
  raise ValueError(f"unknown implementation {name!r}")


def count_params(c: dict) -> int:
  return sum(w.size + b.size for w, b in c.values())


def convert_error(impl, x) -> float:
  """Max |own forward − common forward| over μ, σ and the logits at z = μ (a converter check)."""
  own = impl.own_forward(x)
  common = canonical_forward(impl.canonical(), x, jnp.zeros((x.shape[0], LATENT)))
  return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(own, common,
                                                                                   strict=True))


# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps", type=int, default=None,
                 help="training steps per epoch, on the first steps*100 training images "
                      "(default: a full epoch, 500 on the 50k set; 100 if --quick)")
  p.add_argument("--rounds", type=int, default=None,
                 help="timed rounds, one epoch of each implementation per round (default 3)")
  p.add_argument("--warmup", type=int, default=1,
                 help="untimed epochs of each implementation after compiling (default 1)")
  p.add_argument("--impls", nargs="+", choices=ALL_IMPLS, default=None,
                 help="implementations to run (default: all; torch_eager only if torch imports)")
  p.add_argument("--quick", action="store_true", help="short run: 100 steps per epoch, 3 rounds")
  p.add_argument("--torch-threads", type=int, default=None,
                 help="torch.set_num_threads (default os.cpu_count()). Under load from other "
                      "processes OpenMP's spin-waiting makes >1 thread very slow; "
                      "OMP_WAIT_POLICY=PASSIVE in the environment avoids that")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="also write the JSON record to this file")
  args = p.parse_args(argv)
  if args.rounds is None:
    args.rounds = 3
  if args.steps is None and args.quick:
    args.steps = 100
  if args.rounds < 1:
    p.error("--rounds must be >= 1")
  if args.steps is not None and args.steps < 1:
    p.error("--steps must be >= 1")
  if args.warmup < 1:
    p.error("--warmup must be >= 1 (the first epoch is reported as first_epoch_s)")
  return args


def _fmt(value, spec: str) -> str:
  return "-" if value is None else format(value, spec)


def main(argv=None) -> int:
  args = parse_args(argv)
  log = _common.log
  info = _common.machine_info()
  for pkg in ("numpyro", "torch"):
    try:
      info["versions"][pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      info["versions"][pkg] = None
  log(f"peers: jax {info['versions']['jax']} on {info['jax_backend']} ({info['device_kind']}), "
      f"{info['cpu_usable']} usable CPUs; numpyro {info['versions']['numpyro']}, "
      f"torch {info['versions']['torch']}")

  names = list(args.impls or ALL_IMPLS)
  if "torch_eager" in names and not torch_available():
    log("torch is not installed (optional extra `torch`): skipping torch_eager")
    names.remove("torch_eager")

  train, _, test, data_name = _common.load_mnist_or_random()
  max_steps = train.shape[0] // BATCH_SIZE
  steps = max_steps if args.steps is None else args.steps
  if steps > max_steps:
    log(f"error: --steps {steps} needs {steps * BATCH_SIZE} examples; "
        f"the training set has {train.shape[0]} ({max_steps} steps)")
    return 2
  train_np = np.ascontiguousarray(train[: steps * BATCH_SIZE], np.float32)
  data = jax.device_put(jnp.asarray(train_np))
  epochs = args.warmup + args.rounds
  log(f"data: {data_name}, {data.shape[0]} x {data.shape[1]}, batch {BATCH_SIZE}, "
      f"{steps} steps per epoch; {args.warmup} warm-up + {args.rounds} timed epochs = "
      f"{epochs * steps} steps each")

  keys = jax.random.split(jax.random.key(args.seed), len(ALL_IMPLS))
  impls = {name: build(name, data, train_np, keys[ALL_IMPLS.index(name)], args)
           for name in names}
  sizes = {name: count_params(impl.canonical()) for name, impl in impls.items()}
  log("parameters: " + ", ".join(f"{n} {s}" for n, s in sizes.items()))
  if len(set(sizes.values())) != 1:
    log("error: the implementations differ in size; they are not the same architecture")
    return 2

  # Pay JAX's one-off first-compile costs here, not in the first implementation's compile_s.
  jax.jit(lambda a: jnp.tanh(a @ a.T).sum()).lower(data[:BATCH_SIZE]).compile()
  load_before = os.getloadavg()
  if load_before[0] > info["cpu_usable"]:
    log(f"warning: load average {load_before[0]:.1f} > {info['cpu_usable']} CPUs: other "
        "processes compete for the cores; steps/s will be noisy (and torch with >1 thread "
        "slow unless OMP_WAIT_POLICY=PASSIVE)")
  compile_s, first_epoch_s = {}, {}
  for name, impl in impls.items():
    compile_s[name] = impl.compile()
    log(f"compile {name:>18}: {_fmt(compile_s[name], '.2f')} s")
  for name, impl in impls.items():
    for i in range(args.warmup):
      dt = impl.epoch()
      if i == 0:
        first_epoch_s[name] = dt
      log(f"warm-up {i + 1} {name:>18}: {dt:.2f} s ({steps / dt:.1f} steps/s)")

  times = {name: [] for name in impls}
  cpu_per_wall = {name: [] for name in impls}  # < cpu_usable: other processes took the cores
  for r in range(args.rounds):
    shift = r % len(names)
    order = names[shift:] + names[:shift]  # rotate: every impl takes every position in turn
    for name in order:
      cpu0 = time.process_time()
      times[name].append(impls[name].epoch())
      cpu_per_wall[name].append((time.process_time() - cpu0) / times[name][-1])
    log(f"round {r + 1}/{args.rounds}: " + ", ".join(
        f"{name} {steps / times[name][-1]:.1f}" for name in names) + " steps/s")

  rate = {name: steps / statistics.median(ts) for name, ts in times.items()}

  # Test ELBO: one evaluation for all, on converted parameters, with the same ε for everyone.
  test_x = jnp.asarray(test, jnp.float32)
  eps = jax.random.normal(jax.random.key(EVAL_SEED), (test_x.shape[0], LATENT))
  test_elbo, conv_err = {}, {}
  for name, impl in impls.items():
    test_elbo[name] = float(common_elbo(impl.canonical(), test_x, eps))
    conv_err[name] = convert_error(impl, test_x[:BATCH_SIZE])
  own_jvae = None
  if "jvae" in impls:
    jv = impls["jvae"]
    own = jax.jit(lambda p, k, x: jvae.evaluate(jvae.elbo(jv.model), p, k, x, batch_size=1000))
    own_jvae = float(own(jv.state.params, jax.random.key(EVAL_SEED), test_x))

  rows = [{"impl": name, "steps_per_s": rate[name], "compile_s": compile_s[name],
           "first_epoch_s": first_epoch_s[name], "epoch_s": times[name],
           "test_elbo": test_elbo[name], "train_bound_last_epoch": impls[name].train_bound,
           "steps": epochs * steps, "convert_max_abs_err": conv_err[name],
           "cpu_per_wall": statistics.median(cpu_per_wall[name])} for name in names]

  jax_peers = [n for n in names if n in JAX_IMPLS and n != "jvae"]
  fastest = max(jax_peers, key=rate.get) if jax_peers else None
  have_jvae = "jvae" in rate
  ratios = {
      "jvae_vs_fastest_jax_peer": rate["jvae"] / rate[fastest] if have_jvae and fastest else None,
      "fastest_jax_peer": fastest,
      "jvae_vs_torch": (rate["jvae"] / rate["torch_eager"]
                        if have_jvae and "torch_eager" in rate else None),
      "jvae_vs": {n: rate["jvae"] / rate[n] for n in names if n != "jvae"} if have_jvae else {},
  }
  goals = {"jvae_vs_fastest_jax_peer_min": GOAL_VS_JAX, "jvae_vs_torch_min": GOAL_VS_TORCH}
  goals_met = {
      "jvae_vs_fastest_jax_peer": (None if ratios["jvae_vs_fastest_jax_peer"] is None
                                   else ratios["jvae_vs_fastest_jax_peer"] >= GOAL_VS_JAX),
      "jvae_vs_torch": (None if ratios["jvae_vs_torch"] is None
                        else ratios["jvae_vs_torch"] >= GOAL_VS_TORCH),
  }

  log("")
  log(f"{'impl':>18} {'steps/s':>8} {'compile s':>9} {'1st epoch s':>11} {'test ELBO':>9} "
      f"{'train bound':>11} {'steps':>6} {'conv err':>8} {'cpu/wall':>8}")
  for row in rows:
    log(f"{row['impl']:>18} {row['steps_per_s']:8.1f} {_fmt(row['compile_s'], '9.2f'):>9} "
        f"{row['first_epoch_s']:11.2f} {row['test_elbo']:9.2f} "
        f"{row['train_bound_last_epoch']:11.2f} {row['steps']:6d} "
        f"{row['convert_max_abs_err']:8.1e} {row['cpu_per_wall']:8.2f}")
  log(f"test ELBO: common evaluation of converted parameters (single sample, analytic KL, "
      f"{test_x.shape[0]} test images, fixed key {EVAL_SEED})"
      + (f"; jvae's own jvae.elbo: {own_jvae:.2f}" if own_jvae is not None else ""))
  if ratios["jvae_vs_fastest_jax_peer"] is not None:
    log(f"jvae / fastest JAX peer ({fastest}): {ratios['jvae_vs_fastest_jax_peer']:.3f} "
        f"(goal >= {GOAL_VS_JAX}: {'met' if goals_met['jvae_vs_fastest_jax_peer'] else 'NOT met'})")
  if ratios["jvae_vs_torch"] is not None:
    log(f"jvae / torch eager: {ratios['jvae_vs_torch']:.3f} "
        f"(goal >= {GOAL_VS_TORCH}: {'met' if goals_met['jvae_vs_torch'] else 'NOT met'})")

  record = {
      "benchmark": "peers",
      "rows": rows,
      "ratios": ratios,
      "goals": goals,
      "goals_met": goals_met,
      "test_elbo_method": "common evaluation of converted params: single sample, analytic KL, "
                          f"mean over the test set, eps from jax.random.key({EVAL_SEED})",
      "jvae_own_test_elbo": own_jvae,
      "steps_per_epoch": steps,
      "warmup_epochs": args.warmup,
      "rounds": args.rounds,
      "batch_size": BATCH_SIZE,
      "num_examples": int(data.shape[0]),
      "num_test": int(test_x.shape[0]),
      "num_params": next(iter(sizes.values())),
      "data": data_name,
      "torch_threads": getattr(impls.get("torch_eager"), "threads", None),
      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
      "load_average": {"start": load_before, "end": os.getloadavg()},
      **info,
  }
  _common.emit(record, args.out)
  bad = [r["impl"] for r in rows
         if not np.isfinite(r["test_elbo"]) or not r["convert_max_abs_err"] < CONVERT_TOL]
  if bad:
    log(f"error: non-finite test ELBO or failed parameter conversion: {bad}")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
