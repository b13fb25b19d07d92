"""Peers: jvae against other ways to train the same VAE, and against its matmul floor, in one run.

The model and protocol are Burda et al.'s (2015) one-stochastic-layer VAE: 784-200-200-50 tanh
encoder with a factorized Gaussian q(z|x) (σ = softplus(·) + 1e-4), mirrored decoder, Bernoulli
likelihood, single-sample ELBO, Adam 1e-3, batch 100, statically binarized MNIST. The
implementations (``--impls``):

  jvae                ``jvae.trainer(jvae.elbo(burda2015()), optax.adam)``: one epoch = one
                      ``lax.scan`` (analytic KL).
  jvae_sub_batches    the same with ``sub_batches=2, unroll=2``: each batch's bound as two
                      independent sub-batches of 50 side by side (another random stream, the same
                      estimator), two steps per iteration of the epoch's scan (the same result).
  flax_optax          the hand-written Flax + optax model and scanned epoch of
                      ``benchmarks/throughput.py`` (imported from there; analytic KL).
  numpyro_trace_elbo  NumPyro SVI with ``flax_module`` encoder (guide) and decoder (model),
                      ``Trace_ELBO`` (Monte-Carlo KL), the optax Adam through
                      ``optax_to_numpyro``; the epoch is a jitted ``lax.scan`` over ``svi.update``.
  numpyro_meanfield   the same with ``TraceMeanField_ELBO`` (analytic KL).
  torch_eager         PyTorch eager ``nn.Module``s, ``torch.optim.Adam``, BCE-with-logits + analytic
                      KL, a plain Python loop over batches (only when ``import torch`` works; the
                      optional ``torch`` extra), on the CPU beside JAX's CPU and on CUDA beside a
                      GPU (``_harness.torch_device``; skipped when this torch has no CUDA),
                      there with TF32 matmuls allowed like JAX's default float32
                      (``_harness.torch_matmul_like_jax``).
                      Initialised with the weights of a Flax init so that every implementation
                      starts from the same distribution of weights.
  matmul_floor        not a trainer: the model's 20 dots alone (the 7 forward dots, 7 weight
                      gradients and 6 input gradients of one step, same shapes, batch 100) with no
                      elementwise work but summing the weight gradients, scanned over the same
                      steps. jvae's steps/s as a fraction of it is how close jvae runs to the
                      floor that its matmuls set. ``dots`` in its row counts the dots of its
                      compiled program, beside the same count for jvae's epoch.

Protocol: every implementation trains on the same first ``--steps`` × 100 training images for the
same number of steps per epoch. The JAX ones are compiled ahead of time first (``compile_s`` is
trace + lower + XLA compile), then each runs ``--warmup`` untimed epochs (the first one's time is
``first_epoch_s``; for PyTorch that is its whole warm-up), then ``--rounds`` timed epochs each,
the order rotating every round (``_harness.alternate``). steps/s is the median over rounds.

Test ELBO: every implementation's trained parameters are converted into one common layout and
evaluated by one function (single sample, analytic KL, the same ε for all from a fixed key, the
mean over all test images), so the number is the same metric for all. Each converter is checked
against the implementation's own forward pass (``convert_max_abs_err``). jvae's own
``jvae.elbo`` on the test set is reported alongside as a cross-check.

Goals (2-core CPU): jvae ≥ 1.1× the fastest JAX peer, ≥ 1.6× PyTorch eager, ≥ 0.8× the matmul
floor, in steps/s; checked for jvae's default and for ``sub_batches=2, unroll=2`` (options, so
both).

Findings (2-core x86-64 CPU, jax 0.10.2, 200-step epochs, medians of 7–11 alternating rounds;
the one-off scripts were deleted): XLA:CPU runs the dots through YNNPACK already
(``__ynn_fusion``). Per-executable compiler options (``.compile(compiler_options=…)``) gave
nothing to keep: ``xla_cpu_prefer_vector_width=512`` and ``xla_cpu_opt_preset`` FAST_RUNTIME
within ±5% noise for jvae and NumPyro alike, and so (at 7782caf) ``xla_cpu_scheduler_type``
CONCURRENCY_OPTIMIZED (287.5 against 281.0 steps/s; 306.5 against 302.4 with ``sub_batches=2``),
MEMORY_OPTIMIZED and the concurrency-optimised scheduler turned off; YNNPACK elementwise fusion
(``xla_cpu_experimental_ynn_fusion_type`` DOT,ELTWISE) 0.75×; oneDNN dot fusion ran but trained
to a wrong bound (−206 against −124.7 after 200 steps). The guard as in the vmapped epoch (the
scan unguarded, redone with the guard only when a step was not finite) measured the same as the
per-step ``lax.cond`` (350–367 against 352–356 steps/s, NumPyro 356 in that run), so the guard no
longer costs a measurable share (measured again at 8dcfff1: 368 against 376 steps/s).

Per-thunk profile at 8dcfff1 (``jax.profiler.trace`` read back with ``jax.profiler.ProfileData``;
self time of every thunk summed over XLA's two worker threads, one 200-step epoch): jvae's epoch
and NumPyro's meanfield one do nearly the same work, 795 against 774 thread-ms, 58–60% of it in
the dots. jvae's extra is the guard's sums (~17 ms), the batch gather (+7 ms) and the thunk
executor itself (+11 ms, one more nested executor for the guard's cond); its fused Bernoulli pass
saves 11 ms. Adam is three loop fusions per leaf in both, ~100 thread-ms; a single fusion over
the stacked (params, μ, ν) was slower alone (160–200 against 110–120 µs per 784×200 leaf). Folding
the Bernoulli support check into the sum (NaN per entry instead of an ``all`` per row) read 374
against 376 steps/s; not kept. What limits both is how busy the two cores are: 1.63 of them
(``cpu_per_wall``). Splitting each batch into independent sub-batches, whose matmul chains XLA's
concurrent executor runs on both cores at once, raises that to 1.76–1.79: ``sub_batches=2`` read
1.09×, 1.06× and 1.13× jvae's default in three runs at 8dcfff1 (387 against 354, 421 against
396, 392 against 347 steps/s), then 1.04× in the quick suite at 4bebf65 and 1.02× in a 15-round
run of 200-step epochs; 4 sub-batches read 1.06× in the run where 2 read 1.09× (376 against
354). It changes the random stream, so it is an option (``jvae_sub_batches``), not the default.

Rejected at 5a54fbd (``--quick``, 5–7 alternating rounds on a quiet machine, load ≤ 1.3): XLA's
dots single-threaded (``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false``), leaving the two cores to
the concurrent executor: jvae 378.9 against 434.9 steps/s, ``sub_batches=2`` 397.6 against 473.8,
the matmul floor 478.5 against 557.3 (NumPyro 408.8 against 436.8), so YNNPACK's own threading of
the batch-100 dots is worth keeping. The guard as an elementwise select of the update (``where(ok,
new, old)`` fused into Adam's loops, no ``lax.cond`` and its nested executor; a temporary edit of
``guarded_step``'s unbatched branch, reverted): 393.6 steps/s against 419.3 with the cond in the
next run, NumPyro 393.0 and 429.9 alongside (0.98–1.00× NumPyro either way; ``sub_batches=2`` 362.3
against 449.0); not kept.
Where it stands at 5fdc0b5 (200-step epochs, 11 alternating rounds, load ≈ 1.9): jvae 374.6,
``sub_batches=2`` 422.9, NumPyro meanfield 390.1 and ``Trace_ELBO`` 377.7, hand-written Flax 349.4,
the floor 483.2 steps/s: the default at 0.96× the fastest JAX peer, ``sub_batches=2`` at 1.08×
(0.875 of the floor).
Unrolled epochs, at 4d5a81b (one process, 100-step epochs, 11–15 alternating rounds, load ≤ 1.4; the
``trainer``'s scan unrolled by a temporary edit, now its ``unroll`` option): with ``sub_batches=2``,
two steps per scan iteration read 1.15×, 1.13× and 1.15× NumPyro meanfield in three runs, where one
step per iteration read 1.08×, 1.09× and 1.05× in the same runs, and 0.90 and 0.92 of the floor;
``cpu_per_wall`` rose from 1.76–1.79 to 1.84–1.87. Four steps per iteration read 1.10×, three 1.136×
against two's 1.139× (at f87ccd4, 11 rounds). Without sub-batches unrolling read within the noise
(0.97× against 0.99×, 0.97× against 0.94×), and so did NumPyro's own scan unrolled by 2 (1.02× its
default; a 4th run, where jvae with both options read 1.12×). The unrolled epoch matches the plain
one up to float32 rounding (bitwise for this model after two epochs), so ``jvae_sub_batches`` is
measured with ``unroll=2``; the quick suite at 9578a07 read it at 1.14× NumPyro meanfield and 0.92
of the floor (the default 0.99× and 0.80). jvae's seed program (4 seeds interleaved per scan body,
``jvae.make_epoch_fn``) with the trainer unrolled by 2 read 479.9 against 478.4 seed-steps/s (9
rounds): its cores are busy already (``cpu_per_wall`` 1.86–1.88).

    JVAE_DATA_DIR=/path/to/data python -m benchmarks.peers [--quick] [--steps S] [--rounds R]
        [--impls jvae flax_optax ...] [--out FILE.json]
"""

from __future__ import annotations

import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jvae
from benchmarks import _harness as h
from benchmarks import throughput

BATCH_SIZE = throughput.BATCH_SIZE
LATENT = throughput.LATENT
HIDDEN = throughput.HIDDEN
LEARNING_RATE = throughput.LEARNING_RATE
MIN_SCALE = throughput.MIN_SCALE

JAX_IMPLS = ("jvae", "jvae_sub_batches", "flax_optax", "numpyro_trace_elbo", "numpyro_meanfield")
JVAE_IMPLS = ("jvae", "jvae_sub_batches")
SUB_BATCH_OPTIONS = {"sub_batches": 2, "unroll": 2}  # the jvae_sub_batches row's trainer options
_SUB_BATCH_LABEL = "jvae (" + ", ".join(f"{k}={v}" for k, v in SUB_BATCH_OPTIONS.items()) + ")"
ALL_IMPLS = (*JAX_IMPLS, "torch_eager", "matmul_floor")
GOALS = [h.Goal(f"{own}_vs_{what}", ">=", target, f"{label} / {peer} steps/s")
         for own, label in (("jvae", "jvae"),
                            ("jvae_sub_batches", _SUB_BATCH_LABEL))
         for what, target, peer in (("fastest_jax_peer", 1.1, "fastest JAX peer"),
                                    ("torch", 1.6, "PyTorch eager"),
                                    ("matmul_floor", 0.8, "matmul floor"))]
EVAL_SEED = 1234  # the fixed key of the common test-ELBO evaluation
CONVERT_TOL = 1e-3  # max |own forward − common forward| before a conversion counts as wrong

# The common parameter layout: layer name -> (W of shape (in, out), b), float32 numpy arrays.
LAYERS = ("enc0", "enc1", "loc", "scale", "dec0", "dec1", "logits")


# --------------------------------------------------------------------------------------------
# The common layout and evaluation: one forward pass for every implementation's parameters.
# --------------------------------------------------------------------------------------------


def canonical_forward(c, x, eps):
  """``(μ, σ, logits)`` of the common layout ``c``, with z = μ + σ ε."""

  def dense(name, a):
    w, b = c[name]
    return a @ w + b

  g = jnp.tanh(dense("enc1", jnp.tanh(dense("enc0", x))))
  mu = dense("loc", g)
  sigma = jax.nn.softplus(dense("scale", g)) + MIN_SCALE
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


def hand_canonical(enc, dec) -> dict:
  """The common layout from the ``params`` of throughput.HandEncoder / HandDecoder."""
  out = {name: _wb(enc[f"Dense_{i}"]) for i, name in enumerate(("enc0", "enc1", "loc", "scale"))}
  out.update({name: _wb(dec[f"Dense_{i}"]) for i, name in enumerate(("dec0", "dec1", "logits"))})
  return out


def jvae_canonical(params) -> dict:
  """The common layout from ``jvae.burda2015()`` parameters."""
  enc, dec = params["params"]["encoder"], params["params"]["decoder"]
  return {"enc0": _wb(enc["network"]["dense_0"]), "enc1": _wb(enc["network"]["dense_1"]),
          "loc": _wb(enc["head"]["loc"]), "scale": _wb(enc["head"]["scale"]),
          "dec0": _wb(dec["network"]["dense_0"]), "dec1": _wb(dec["network"]["dense_1"]),
          "logits": _wb(dec["head"]["logits"])}


# --------------------------------------------------------------------------------------------
# The implementations: each has compile() -> seconds | None, a zero-argument epoch() for
# _harness.alternate, and (not the floor) canonical(), own_forward(x) -> (μ, σ, logits at z = μ)
# by its own code, and train_bound (the last epoch's mean).
# --------------------------------------------------------------------------------------------


class JaxImpl:
  """An ``epoch(state, data) -> (state, metrics)`` function, compiled with the state donated."""

  def __init__(self, name, epoch_fn, state, data, canonical_fn=None, forward_fn=None):
    self.name, self._epoch_fn, self._state, self._data = name, epoch_fn, state, data
    self._canonical_fn, self._forward_fn = canonical_fn, forward_fn
    self.epoch, self.compiled = None, None

  def compile(self) -> float:
    self.compiled, seconds = h.compile_ahead(self._epoch_fn, self._state, self._data, donate=True)
    self.epoch = h.Carry(self.compiled, self._state, self._data)
    return seconds

  @property
  def state(self):
    return self.epoch.state if self.epoch else self._state

  @property
  def train_bound(self) -> float:
    return float(self.epoch.out["bound"]) if self.epoch and self.epoch.out else float("nan")

  def canonical(self) -> dict:
    return self._canonical_fn(self.state)

  def own_forward(self, x):
    return tuple(np.asarray(a) for a in self._forward_fn(self.state, x))


def setup_jvae(data, key, *, sub_batches: int = 1, unroll: int = 1) -> JaxImpl:
  model = jvae.burda2015(event_shape=(data.shape[1],))
  epoch_fn, state = throughput.jvae_setup(data, key, sub_batches=sub_batches, unroll=unroll)

  def forward(state, x):
    q = model.apply(state.params, x, method=jvae.VAE.encode)
    px = model.apply(state.params, q.loc, method=jvae.VAE.decode)
    return q.loc, q.scale_diag, px.distribution.logits

  name = "jvae" if sub_batches == 1 else "jvae_sub_batches"
  impl = JaxImpl(name, epoch_fn, state, data, lambda s: jvae_canonical(s.params), forward)
  impl.model = model
  return impl


def setup_flax_optax(data, key) -> JaxImpl:
  epoch_fn, state = throughput.hand_setup(data, key)
  module = throughput.HandVAE(data.shape[1])

  def canonical(state):
    p = state[0]["params"]
    return hand_canonical(p["encoder"], p["decoder"])

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
  encoder_module, decoder_module = throughput.HandEncoder(), throughput.HandDecoder(dim)

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
    return hand_canonical(p["encoder$params"], p["decoder$params"])

  def forward(state, x):
    p = svi.get_params(state[0])
    mu, sigma = encoder_module.apply({"params": p["encoder$params"]}, x)
    return mu, sigma, decoder_module.apply({"params": p["decoder$params"]}, mu)

  name = "numpyro_meanfield" if meanfield else "numpyro_trace_elbo"
  return JaxImpl(name, epoch, (svi_state, perm_key), data, canonical, forward)


def floor_epoch(weights, batches):
  """The 20 dots of ``--steps`` training steps of the model, nothing else: per step the forward
  dots, then each layer's weight gradient (input.T @ its output-gradient) and input gradient
  (output-gradient @ W.T), every output-gradient stood in for by a forward output of its shape.
  The weight gradients are summed (the only elementwise work), so that none is dead code."""
  w0, w1, w_loc, w_scale, w3, w4, w5 = weights

  def step(acc, x):
    a0 = x @ w0
    a1 = a0 @ w1
    loc, scale = a1 @ w_loc, a1 @ w_scale
    a3 = loc @ w3
    a4 = a3 @ w4
    logits = a4 @ w5
    g4 = logits @ w5.T
    g3 = g4 @ w4.T
    g_loc = g3 @ w3.T
    g1 = g_loc @ w_loc.T + scale @ w_scale.T
    g0 = g1 @ w1.T
    grads = (x.T @ g0, a0.T @ g1, a1.T @ g_loc, a1.T @ scale, loc.T @ g3, a3.T @ g4,
             a4.T @ logits)
    return tuple(a + g for a, g in zip(acc, grads, strict=True)), None

  acc, _ = jax.lax.scan(step, tuple(jnp.zeros_like(w) for w in weights), batches)
  return acc, {}


class Floor:
  """The matmul floor (:func:`floor_epoch`) on the same data, as a timed run."""

  name = "matmul_floor"

  def __init__(self, data, key):
    dim = data.shape[1]
    shapes = [(dim, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, LATENT), (HIDDEN, LATENT),
              (LATENT, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, dim)]
    keys = jax.random.split(key, len(shapes))
    self._weights = tuple(jax.random.normal(k, s) / np.sqrt(s[0]) for k, s in zip(keys, shapes,
                                                                                   strict=True))
    self._batches = data.reshape(-1, BATCH_SIZE, dim)
    self.epoch, self.compiled = None, None

  def compile(self) -> float:
    self.compiled, seconds = h.compile_ahead(floor_epoch, self._weights, self._batches)
    self.epoch = lambda: self.compiled(self._weights, self._batches)
    return seconds


def torch_available() -> bool:
  try:
    import torch  # noqa: F401
  except ImportError:
    return False
  return True


def torch_vae(c: dict, *, threads: int | None = None, seed: int = 0):
  """The PyTorch eager model (``nn.Linear`` layers named as the common layout ``c``, whose
  weights it gets), with ``torch.set_num_threads(threads or os.cpu_count())``."""
  import torch

  nn, F = torch.nn, torch.nn.functional
  torch.set_num_threads(threads or os.cpu_count())
  torch.manual_seed(seed)
  dim = c["enc0"][0].shape[0]

  class TorchVAE(nn.Module):
    def __init__(self):
      super().__init__()
      self.enc0, self.enc1 = nn.Linear(dim, HIDDEN), nn.Linear(HIDDEN, HIDDEN)
      self.loc, self.scale = nn.Linear(HIDDEN, LATENT), nn.Linear(HIDDEN, LATENT)
      self.dec0, self.dec1 = nn.Linear(LATENT, HIDDEN), nn.Linear(HIDDEN, HIDDEN)
      self.logits = nn.Linear(HIDDEN, dim)

    def encode(self, x):
      g = torch.tanh(self.enc1(torch.tanh(self.enc0(x))))
      return self.loc(g), F.softplus(self.scale(g)) + MIN_SCALE

    def decode(self, z):
      return self.logits(torch.tanh(self.dec1(torch.tanh(self.dec0(z)))))

    def loss(self, x):
      """Mean over the batch of −ELBO: BCE-with-logits summed over pixels + analytic KL."""
      mu, sigma = self.encode(x)
      z = mu + sigma * torch.randn_like(mu)
      rec = F.binary_cross_entropy_with_logits(self.decode(z), x, reduction="sum")
      kl = 0.5 * torch.sum(mu.square() + sigma.square() - 1.0 - 2.0 * torch.log(sigma))
      return (rec + kl) / x.shape[0]

  model = TorchVAE()
  with torch.no_grad():
    for name in LAYERS:
      w, b = c[name]
      getattr(model, name).weight.copy_(torch.from_numpy(np.array(w.T, np.float32)))
      getattr(model, name).bias.copy_(torch.from_numpy(np.array(b, np.float32)))
  return model


def torch_canonical(model) -> dict:
  return {name: (getattr(model, name).weight.detach().cpu().numpy().T.copy(),
                 getattr(model, name).bias.detach().cpu().numpy().copy()) for name in LAYERS}


class TorchImpl:
  """PyTorch eager: nn.Modules, Adam, a Python loop over the batches of a shuffled epoch."""

  name = "torch_eager"

  def __init__(self, data: np.ndarray, init: dict, seed: int, threads: int | None = None,
               device: str = "cpu"):
    import torch

    self._torch = torch
    self.device = device
    self.matmul_precision = h.torch_matmul_like_jax(device)
    self.model = torch_vae(init, threads=threads, seed=seed).to(device)
    self.threads = torch.get_num_threads()
    self._data = torch.from_numpy(np.ascontiguousarray(data, np.float32)).to(device)
    self._gen = torch.Generator(device=device).manual_seed(seed)
    self._opt = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE)
    self.train_bound = float("nan")

  def compile(self) -> None:
    return None  # eager: nothing to compile; the warm-up epoch's time is first_epoch_s

  def epoch(self) -> None:
    torch = self._torch
    n = self._data.shape[0]
    steps = n // BATCH_SIZE
    idx = torch.randperm(n, generator=self._gen, device=self.device)[: steps * BATCH_SIZE]
    idx = idx.view(steps, BATCH_SIZE)
    total = torch.zeros((), device=self.device)
    for i in range(steps):
      self._opt.zero_grad(set_to_none=True)
      loss = self.model.loss(self._data[idx[i]])
      loss.backward()
      self._opt.step()
      total += loss.detach()
    self.train_bound = -float(total) / steps  # float() waits for the device's queue

  def canonical(self) -> dict:
    return torch_canonical(self.model)

  def own_forward(self, x):
    torch = self._torch
    with torch.no_grad():
      mu, sigma = self.model.encode(torch.from_numpy(np.array(x, np.float32)).to(self.device))
      logits = self.model.decode(mu)
    return mu.cpu().numpy(), sigma.cpu().numpy(), logits.cpu().numpy()


def build(name: str, data, train_np: np.ndarray, key, args):
  if name == "jvae":
    return setup_jvae(data, key)
  if name == "jvae_sub_batches":
    return setup_jvae(data, key, **SUB_BATCH_OPTIONS)
  if name == "flax_optax":
    return setup_flax_optax(data, key)
  if name in ("numpyro_trace_elbo", "numpyro_meanfield"):
    return setup_numpyro(data, key, meanfield=name == "numpyro_meanfield")
  if name == "torch_eager":
    init = throughput.HandVAE(data.shape[1]).init(key, data[:BATCH_SIZE],
                                                  jnp.zeros((BATCH_SIZE, LATENT)))["params"]
    return TorchImpl(train_np, hand_canonical(init["encoder"], init["decoder"]), args.seed,
                     args.torch_threads, device=h.torch_device())  # main checked it exists
  if name == "matmul_floor":
    return Floor(data, key)
  raise ValueError(f"unknown implementation {name!r}")


def count_params(c: dict) -> int:
  return sum(w.size + b.size for w, b in c.values())


def count_dots(compiled) -> int | None:
  """Dot operations in a compiled program's optimised HLO (each loop body's once); None off a
  CPU, where XLA turns dots into library calls and fusions that this count would miss."""
  if jax.default_backend() != "cpu":
    return None
  try:
    return len(re.findall(r"\bdot\(", compiled.as_text()))
  except Exception:  # a backend without HLO text
    return None


def convert_error(impl, x) -> float:
  """Max |own forward − common forward| over μ, σ and the logits at z = μ (a converter check),
  both at full float32 precision (``_harness.highest_matmuls``)."""
  with h.highest_matmuls():
    own = impl.own_forward(x)
    common = canonical_forward(impl.canonical(), x, jnp.zeros((x.shape[0], LATENT)))
  return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for a, b in zip(own, common, strict=True))


# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
  p = h.parser(__doc__)
  p.add_argument("--steps", type=int, default=None,
                 help="training steps per epoch, on the first steps*100 training images "
                      "(default: a full epoch, 500 on the 50k set; 100 if --quick)")
  p.add_argument("--rounds", type=int, default=3,
                 help="timed rounds, one epoch of each implementation per round (default 3)")
  p.add_argument("--warmup", type=int, default=1,
                 help="untimed epochs of each implementation after compiling (default 1)")
  p.add_argument("--impls", nargs="+", choices=ALL_IMPLS, default=None,
                 help="implementations to run (default: all; torch_eager only if torch imports)")
  p.add_argument("--torch-threads", type=int, default=None,
                 help="torch.set_num_threads (default os.cpu_count()). Under load from other "
                      "processes OpenMP's spin-waiting makes >1 thread very slow; "
                      "OMP_WAIT_POLICY=PASSIVE in the environment avoids that")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  if args.steps is None and args.quick:
    args.steps = 100
  if args.rounds < 1 or (args.steps is not None and args.steps < 1):
    p.error("--rounds and --steps must be >= 1")
  if args.warmup < 1:
    p.error("--warmup must be >= 1 (the first epoch is reported as first_epoch_s)")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  names = list(args.impls or ALL_IMPLS)
  if "torch_eager" in names and not torch_available():
    h.log("torch is not installed (optional extra `torch`): skipping torch_eager")
    names.remove("torch_eager")
  elif "torch_eager" in names and h.torch_device() is None:
    h.log(f"torch has no device beside JAX's {jax.default_backend()}: skipping torch_eager")
    names.remove("torch_eager")
  train_np, test, data_name, steps = throughput.training_data(args.steps)
  data = jax.device_put(jnp.asarray(train_np))
  epochs = args.warmup + args.rounds
  h.log(f"peers on {jax.default_backend()}: {data_name}, {data.shape[0]} x {data.shape[1]}, "
        f"batch {BATCH_SIZE}, {steps} steps per epoch; {args.warmup} warm-up + {args.rounds} "
        f"timed epochs = {epochs * steps} steps each")

  keys = jax.random.split(jax.random.key(args.seed), len(ALL_IMPLS))
  runs = {name: build(name, data, train_np, keys[ALL_IMPLS.index(name)], args) for name in names}
  impls = {name: impl for name, impl in runs.items() if name != "matmul_floor"}
  sizes = {name: count_params(impl.canonical()) for name, impl in impls.items()}
  if len(set(sizes.values())) > 1:
    h.log(f"error: the implementations differ in size ({sizes}); not the same architecture")
    return 2

  # Pay JAX's one-off first-compile costs here, not in the first implementation's compile_s.
  h.compile_ahead(lambda a: jnp.tanh(a @ a.T).sum(), data[:BATCH_SIZE])
  load_before = os.getloadavg()
  if load_before[0] > os.cpu_count():
    h.log(f"warning: load average {load_before[0]:.1f} > {os.cpu_count()} CPUs: steps/s will "
          "be noisy (and torch with >1 thread slow unless OMP_WAIT_POLICY=PASSIVE)")
  compile_s = {name: run.compile() for name, run in runs.items()}
  rounds = h.alternate({name: run.epoch for name, run in runs.items()}, rounds=args.rounds,
                       warmup=args.warmup, on_round=lambda r, t: h.log(
                           f"round {r + 1}: " + ", ".join(f"{n} {steps / t.wall[n][-1]:.1f}"
                                                          for n in names) + " steps/s"))
  rate = {name: steps / rounds.median(name) for name in names}

  # Test ELBO: one evaluation for all, on converted parameters, with the same ε for everyone.
  test_x = jnp.asarray(test, jnp.float32)
  eps = jax.random.normal(jax.random.key(EVAL_SEED), (test_x.shape[0], LATENT))
  own_jvae = None
  if "jvae" in impls:
    jv = impls["jvae"]
    own = jax.jit(lambda p, k, x: jvae.evaluate(jvae.elbo(jv.model), p, k, x, batch_size=1000))
    own_jvae = float(own(jv.state.params, jax.random.key(EVAL_SEED), test_x))
  dots = {name: n for name in ("jvae", "matmul_floor")
          if name in runs and (n := count_dots(runs[name].compiled)) is not None}
  rows = []
  for name in names:
    row = {"impl": name, "steps_per_s": rate[name], "compile_s": compile_s[name],
           "first_epoch_s": rounds.first[name], "epoch_s": rounds.wall[name],
           "cpu_per_wall": rounds.cpu_per_wall(name), "steps": epochs * steps}
    if name in impls:
      impl = impls[name]
      row.update(test_elbo=float(common_elbo(impl.canonical(), test_x, eps)),
                 train_bound_last_epoch=impl.train_bound,
                 convert_max_abs_err=convert_error(impl, test_x[:BATCH_SIZE]))
    else:
      row["test_elbo"] = None
    if name in dots:
      row["dots"] = dots[name]
    rows.append(row)
    h.log(f"{name:>18}: {rate[name]:7.1f} steps/s, compile {compile_s[name] or 0:.2f} s"
          + (f", test ELBO {row['test_elbo']:.2f}, conversion error "
             f"{row['convert_max_abs_err']:.1e}" if name in impls else "")
          + (f", {dots[name]} dots" if name in dots else ""))

  jax_peers = [n for n in names if n in JAX_IMPLS and n not in JVAE_IMPLS]
  fastest = max(jax_peers, key=rate.get) if jax_peers else None
  ratios = {"fastest_jax_peer": fastest}
  for own in JVAE_IMPLS:
    if own not in rate:
      continue
    vs = {n: rate[own] / rate[n] for n in names if n not in JVAE_IMPLS}
    ratios.update({f"{own}_vs_fastest_jax_peer": vs.get(fastest),
                   f"{own}_vs_torch": vs.get("torch_eager"),
                   f"{own}_vs_matmul_floor": vs.get("matmul_floor"), f"{own}_vs": vs})
  goals = h.check(GOALS, ratios)
  h.emit(h.record("peers", {
      "rows": rows, "ratios": ratios,
      "test_elbo_method": "common evaluation of converted params: single sample, analytic KL, "
                          f"mean over the test set, eps from jax.random.key({EVAL_SEED})",
      "jvae_own_test_elbo": own_jvae, "steps_per_epoch": steps, "warmup_epochs": args.warmup,
      "rounds": args.rounds, "batch_size": BATCH_SIZE, "num_examples": int(data.shape[0]),
      "num_test": int(test_x.shape[0]), "num_params": next(iter(sizes.values()), None),
      "data": data_name, "torch_threads": getattr(runs.get("torch_eager"), "threads", None),
      "torch_device": getattr(runs.get("torch_eager"), "device", None),
      "torch_matmul_precision": getattr(runs.get("torch_eager"), "matmul_precision", None),
      "sub_batch_options": SUB_BATCH_OPTIONS if "jvae_sub_batches" in runs else None,
      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
      "load_average": {"start": load_before, "end": os.getloadavg()}},
      goals=goals, packages=("numpyro", "torch")), args.out)
  bad = [r["impl"] for r in rows if r["impl"] in impls
         and (not np.isfinite(r["test_elbo"]) or not r["convert_max_abs_err"] < CONVERT_TOL)]
  if bad:
    h.log(f"error: non-finite test ELBO or failed parameter conversion: {bad}")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
