"""Evaluation cost: ``jvae.log_marginal`` (K = 5000) over the test set, against PyTorch eager.

The model is Burda et al.'s (2015) one-layer VAE (``jvae.burda2015()``), freshly initialised: the
cost does not depend on the parameter values. jvae runs ``jvae.evaluate_pointwise`` of
``jvae.log_marginal(model, num_samples=K, chunk_size=C, return_stderr=True)``, one compiled
program: batches of B images, each batch's K samples drawn C at a time inside a ``lax.scan``, so
a step holds C × B rows of decoder activations and logits whatever K is. PyTorch eager
(``--torch``, the default when ``import torch`` works) does the same importance sampling with the
same weights converted, the same K, B and C, and the same running log-sum-exp and standard
error, in a Python loop under ``torch.inference_mode()``; the two alternate in the same run
(``_harness.alternate``, ``--rounds``), and their estimates must agree within their Monte-Carlo
errors. PyTorch runs on the CPU beside JAX's CPU and on CUDA beside a GPU, there with TF32
matmuls allowed like JAX's default float32 (``_harness.torch_matmul_like_jax``).

Extra memory is what the compiled program allocates beyond its inputs (temp + output − aliased
bytes of ``memory_analysis()``), for K = 500, 5000 and 50000 at the same B and C (compiled, not
run, for the K not timed): it does not grow with K.

Defaults: B = 100 on a CPU, 10000 elsewhere; C = the largest balanced chunk with C × B ≤
``--max-rows`` (4096 on a CPU; 2^18 elsewhere, so that a GPU takes K = 5000 in 193 scan steps of
26 samples rather than 5000 steps of one; XLA:CPU's program for 250,000 rows, B = 200 and
C = 1250, holds 3.2 GB of extra memory, ~13 KB a row). ``--quick`` times 300 images in 3
alternating rounds (the median; one round of 1000 images read jvae / torch as 1.22 and 0.99 in two
suite runs a session apart) and extrapolates × 33 (``"extrapolated"``).
Goals: K = 5000 on 10,000 images ≤ 5 minutes on the 2-core CPU, ≥ 1.5× PyTorch eager, ≤ 64 MB
extra memory whatever K is on the CPU (its 4096 rows per step), extra memory that does not grow
with K on every device (every larger K of 500, 5000, 50000 ≤ 1.1 × the timed K's; a K below the
chunk needs less), ≤ 1 s on an H100-class GPU.

Where the time goes (a profile of one scan step, C = 39 samples × B = 100 images, by process
CPU time on the 2-core x86-64 CPU; K = 5000 on 10,000 images is 12,500 such steps; the code was
deleted once its findings were written here):

* the 200→784 output dot: 45% of the step, at ≈ 85 GFLOP per core-second, the rate of a 2048²
  f32 GEMM on the same machine (87): it runs at the matmul roofline, and it is 76% of the
  decoder's FLOPs (313,600 of 413,600 per sample; the encoder runs once per image);
* the Bernoulli log-prob (softplus and x·l, summed over 784 pixels): 31% (before the fusion
  below);
* the 50→200→200 decoder layers with their tanh: 18%; the threefry normals: 6%. The whole step
  costs the sum of these pieces.
* Rejected: the ``rbg`` PRNG (3.7× slower normals on a CPU, the step 25% slower); the
  single-consumer form −Σ softplus((1 − 2x)·l) for binary x (within 3%: XLA already fuses the
  library's form); a bf16 output dot with f32 accumulation (1.7× faster for that dot, ≈ 20% of
  the run, but it moves each log p(x|z) by 0.013 nats on average: an option to measure, never a
  silent default).
* Chunk size: the cost per sample is flat from 400 to 8,000 rows per step (7.4–7.6 core-µs) and
  worse at 16,000 (8.8), while memory grows with the rows (3 MB at 400, 54 MB at 8,000): hence
  the 4096-row default (≈ 26 MB then, 50 MB with the fused Bernoulli sum).
* A host loop over one jitted batch and the one program give bitwise the same estimates at the
  same speed.
* Rejected: the batches dealt over the 2 cores as 2 JAX devices (``jax.shard_map``, combined
  once at the end), which trains seeds 1.4× faster (``benchmarks/seeds.py``): 0.93–1.03× one
  device on 500 images, since a 4,000-row step is matmul-bound and one device's matmuls already
  keep both cores busy.
* Kept: the Bernoulli log-prob summed in one fused pass (``numerics.bernoulli_log_prob_sum``,
  used by every Bernoulli likelihood): softplus(l) = max(l, 0) + log(1 + e^{−|l|}), with one
  ``log`` per block of 56 pixels of the product of the (1 + e^{−|l|}) ∈ (1, 2] instead of a
  ``log1p`` per pixel. Alone, on 3,900 × 784 logits: 4.8–5.9 → 2.4 ms. This benchmark
  (``--quick``) side by side with the elementwise form, at 2f661ae and on its branch: jvae 221.5 s
  against 171.5 and 174.5 s (1.27–1.29×), torch 217.6 s and 201.7–217.4 s in the same runs; the
  step's extra memory went from 26 to 50 MB at 4,096 rows, still flat in K. Training steps/s
  were within the noise (``throughput.py --quick``, twice each: 435 and 446 against 465 and 457).
* Rejected: a block's sum and product in one variadic ``lax.reduce`` (a single pass over the
  logits). Alone, on a 4,000 × 200 → 784 decoder output plus the sum, 17–19 against 28–36 ms;
  but in this benchmark (``--quick``, alternating with the kept form at 4bebf65) 280 and 296 s
  against 214 and 228 s: XLA:CPU runs that reduce as one single-threaded loop (7.3 ms per
  chunk, the profile's largest thunk), where the kept form's sum becomes a YNNPACK
  matrix-vector product and its product a windowed reduction, 4.1 thread-ms per chunk spread
  over both cores.
* Rejected, at 4bebf65 (200 images, K = 5000, medians of 5 alternating rounds): more
  independent work per step for XLA's concurrent executor, which sped training up
  (``jvae.trainer(sub_batches=2)``): two batches side by side per loop step 4.92 against 5.03 s;
  each chunk's decoder pass split in 2 or 4 sample groups 4.81 and 4.69 against 4.87 s; the
  chunk scan unrolled by 2 4.41 against 4.33 s (all bitwise the same estimates). The cores stay
  ~1.75 busy in every form: the 4,000-row dots already use both.
* What the 1.5× goal asked before that fusion: the output dot and the Bernoulli log-prob, 76%
  of a step, were at the roofline and fused already; 1.5× PyTorch's 236 s is 157 s, 76% of
  jvae's 206 s (BENCHMARKS.md then), i.e. the 50→200→200 layers and the normals would have to
  cost nothing.

    JVAE_DATA_DIR=/path/to/data python -m benchmarks.evaluation [--quick] [--num-samples K]
        [--images N] [--batch-size B] [--chunk-size C] [--no-torch] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jvae
from benchmarks import _harness as h
from benchmarks import peers
from jvae.training.evaluation import evaluate_pointwise

TARGET_IMAGES = 10000
MEMORY_KS = (500, 5000, 50000)
DEFAULT_MAX_ROWS = {"cpu": 4096}  # any other backend: ACCELERATOR_MAX_ROWS
ACCELERATOR_MAX_ROWS = 2**18
GOALS = [h.Goal("cpu_seconds", "<=", 300.0, f"K = 5000 on {TARGET_IMAGES} images on a CPU",
                " s"),
         h.Goal("jvae_vs_torch", ">=", 1.5, "jvae / PyTorch eager speed"),
         h.Goal("extra_memory_mb", "<=", 64.0, "extra memory for K = 500 … 50000 on a CPU",
                " MB"),
         h.Goal("extra_memory_growth", "<=", 1.1, "the most extra memory of a larger K (of "
                f"{', '.join(map(str, MEMORY_KS))}) / the timed K's: it does not grow with K",
                "×"),
         h.Goal("h100_seconds", "<=", 1.0, f"K = 5000 on {TARGET_IMAGES} images on an "
                "H100-class GPU", " s")]
AGREE_SE = 5.0  # jvae and torch estimates must agree within this many combined standard errors


def default_chunk(num_samples: int, batch_size: int, max_rows: int) -> int:
  """The largest balanced chunk with chunk × batch ≤ max_rows (at least 1), wasting < 1 per step."""
  cap = max(1, max_rows // batch_size)
  steps = -(-num_samples // cap)
  return -(-num_samples // steps)


def extra_bytes(compiled) -> int | None:
  """What a compiled program allocates beyond its inputs: temp + output − aliased bytes."""
  ma = compiled.memory_analysis()
  if ma is None:
    return None
  return ma.temp_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes


def torch_log_marginal(model, x: np.ndarray, *, num_samples: int, chunk: int, batch_size: int,
                       seed: int, device: str = "cpu"):
  """``jvae.log_marginal``'s estimate and standard error per image, in PyTorch eager.

  ``model`` is ``peers.torch_vae``'s: ``encode(x) -> (μ, σ)``, ``decode(z) -> logits``. For each
  batch the K samples are drawn ``chunk`` at a time with a running log-sum-exp (and sum of
  squared weights for the error). Returns ``(values, stderrs)``, tensors of shape ``(N,)``.
  """
  import torch

  bce = torch.nn.functional.binary_cross_entropy_with_logits
  gen = torch.Generator(device=device).manual_seed(seed)
  data = torch.from_numpy(np.array(x, np.float32)).to(device)
  values, errors = [], []
  with torch.inference_mode():
    for start in range(0, data.shape[0], batch_size):
      xb = data[start:start + batch_size]
      mu, sigma = model.encode(xb)
      log_sigma = torch.log(sigma).sum(-1)
      m = torch.full(xb.shape[:1], -math.inf, device=device)
      s1, s2 = torch.zeros_like(m), torch.zeros_like(m)
      for k in range(0, num_samples, chunk):
        eps = torch.randn((min(chunk, num_samples - k), *mu.shape), generator=gen, device=device)
        z = mu + sigma * eps
        logits = model.decode(z)
        log_lik = -bce(logits, xb.expand_as(logits), reduction="none").sum(-1)
        # log p(z) − log q(z|x); their ±(d/2)·log 2π cancel
        lw = log_lik - 0.5 * (z * z).sum(-1) + 0.5 * (eps * eps).sum(-1) + log_sigma
        m_new = torch.maximum(m, lw.max(0).values)
        s1 = s1 * torch.exp(m - m_new) + torch.exp(lw - m_new).sum(0)
        s2 = s2 * torch.exp(2 * (m - m_new)) + torch.exp(2 * (lw - m_new)).sum(0)
        m = m_new
      mean = s1 / num_samples
      var = torch.clamp(s2 / num_samples - mean**2, min=0) * num_samples / max(num_samples - 1, 1)
      values.append(m + torch.log(s1) - math.log(num_samples))
      errors.append(torch.sqrt(var / num_samples) / mean)
  values, errors = torch.cat(values), torch.cat(errors)
  if device == "cuda":  # the timer stops when the results exist, not when they are queued
    torch.cuda.synchronize()
  return values, errors


def parse_args(argv=None):
  p = h.parser(__doc__)
  p.add_argument("--num-samples", "-k", type=int, default=5000, help="K (default 5000)")
  p.add_argument("--images", type=int, default=None,
                 help=f"test images (default {TARGET_IMAGES}; 300 if --quick, extrapolated)")
  p.add_argument("--batch-size", type=int, default=None,
                 help="images per batch B (default 100 on a CPU, up to 10000 otherwise)")
  p.add_argument("--chunk-size", type=int, default=None,
                 help="samples per scan step C (default: the largest balanced chunk with "
                      "C*B <= --max-rows)")
  p.add_argument("--max-rows", type=int, default=None,
                 help=f"row budget C*B for the default chunk (default {DEFAULT_MAX_ROWS['cpu']} "
                      f"on a CPU, {ACCELERATOR_MAX_ROWS} elsewhere)")
  p.add_argument("--rounds", type=int, default=None,
                 help="timed rounds; the median is reported (default 1; 3 if --quick)")
  p.add_argument("--warmup", type=int, default=None,
                 help="untimed rounds first (default 0 on a CPU, where a round is minutes; 1 "
                      "elsewhere, so that PyTorch's first CUDA calls are not timed)")
  p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=None,
                 help="time PyTorch eager too (default: when torch imports)")
  p.add_argument("--torch-threads", type=int, default=None,
                 help="torch.set_num_threads (default os.cpu_count())")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  if args.images is None:
    args.images = 300 if args.quick else TARGET_IMAGES
  if args.rounds is None:
    args.rounds = 3 if args.quick else 1
  for name in ("num_samples", "images", "batch_size", "chunk_size", "max_rows", "rounds"):
    value = getattr(args, name)
    if value is not None and value < 1:
      p.error(f"--{name.replace('_', '-')} must be >= 1")
  if args.warmup is not None and args.warmup < 0:
    p.error("--warmup must be >= 0")
  if args.torch is None:
    args.torch = peers.torch_available()
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  backend = jax.default_backend()
  _, _, test, data_name = h.load_mnist_or_random()
  n, k = args.images, args.num_samples
  if n > test.shape[0]:
    h.log(f"error: --images {n} but the test set has {test.shape[0]} images")
    return 2
  dim = test.shape[1]
  b = min(args.batch_size or (100 if backend == "cpu" else TARGET_IMAGES), n)
  max_rows = args.max_rows or DEFAULT_MAX_ROWS.get(backend, ACCELERATOR_MAX_ROWS)
  c = min(args.chunk_size or default_chunk(k, b, max_rows), k)
  h.log(f"evaluation on {backend}: {data_name}, {n} test images x {dim}; K={k}, batch B={b}, "
        f"chunk C={c} ({-(-k // c)} scan steps per batch, C*B={c * b} rows)")

  test_np = np.ascontiguousarray(test[:n], np.float32)
  data = jax.device_put(jnp.asarray(test_np))
  model = jvae.burda2015(event_shape=(dim,))
  key = jax.random.key(args.seed)
  params = model.init(jax.random.fold_in(key, 1), data[:2])

  def program(num_samples):
    lm = jvae.log_marginal(model, num_samples=num_samples, chunk_size=c, return_stderr=True)
    return lambda p, kk, d: evaluate_pointwise(lm, p, kk, d, batch_size=b)

  compiled, compile_s = h.compile_ahead(program(k), params, key, data)
  memory = {kk: extra_bytes(compiled if kk == k else h.compile_ahead(program(kk), params, key,
                                                                      data)[0])
            for kk in sorted({*MEMORY_KS, k})}
  h.log(f"compile: {compile_s:.2f} s; extra memory " + ", ".join(
      f"K={kk} {v / 2**20:.1f} MiB" for kk, v in memory.items() if v is not None))
  runs = {"jvae": lambda: compiled(params, key, data)}

  device = h.torch_device() if args.torch else None
  if args.torch and device is None:
    h.log(f"torch has no device beside JAX's {backend}: skipping PyTorch eager")
  if device:
    tv = peers.torch_vae(peers.jvae_canonical(params), threads=args.torch_threads).to(device)
    import torch

    matmul_precision = h.torch_matmul_like_jax(device)

    # the conversion: the same μ, σ and logits at z = μ as the common form, at full precision
    with torch.no_grad(), h.highest_matmuls():
      mu, sigma = tv.encode(torch.from_numpy(test_np[:b]).to(device))
      own = (mu, sigma, tv.decode(mu))
      common = peers.canonical_forward(peers.jvae_canonical(params), data[:b],
                                       jnp.zeros((b, peers.LATENT)))
      err = max(float(np.max(np.abs(o.cpu().numpy() - np.asarray(a))))
                for o, a in zip(own, common, strict=True))
    if not err < peers.CONVERT_TOL:
      h.log(f"error: the converted torch model differs by {err:.2e}")
      return 1
    threads = torch.get_num_threads()
    runs["torch_eager"] = lambda: torch_log_marginal(tv, test_np, num_samples=k, chunk=c,
                                                     batch_size=b, seed=args.seed, device=device)

  warmup = args.warmup if args.warmup is not None else int(backend != "cpu")
  rounds = h.alternate(runs, rounds=args.rounds, warmup=warmup, on_round=lambda r, t: h.log(
      f"round {r + 1}: " + ", ".join(f"{name} {t.wall[name][-1]:.2f} s" for name in runs)))
  out = rounds.last["jvae"]
  estimate = {"jvae": (float(out["mean"]), float(out["mc_stderr"]))}
  if "torch_eager" in runs:
    values, errors = rounds.last["torch_eager"]
    estimate["torch_eager"] = (float(values.mean()), float(errors.square().sum().sqrt() / n))
  scale = TARGET_IMAGES / n
  seconds = {name: rounds.median(name) * scale for name in runs}
  for name, (mean, se) in estimate.items():
    h.log(f"{name}: {seconds[name]:.1f} s for {TARGET_IMAGES} images"
          f"{' (extrapolated)' if scale != 1 else ''}; log p(x) ≈ {mean:.3f} ± {se:.3f} "
          "(untrained model)")
  agree = None
  if "torch_eager" in estimate:
    (mj, sj), (mt, st) = estimate["jvae"], estimate["torch_eager"]
    agree = abs(mj - mt) <= AGREE_SE * math.hypot(sj, st)
  extra_max = max((v for v in memory.values() if v is not None), default=None)
  # the most any larger K takes, against the timed K's (None when no larger K was compiled)
  larger = [memory[kk] for kk in MEMORY_KS if kk > k and memory[kk] is not None]
  mem_k = memory[k]
  kind = jax.devices()[0].device_kind
  at_k = seconds["jvae"] if k == 5000 else None  # the time goals are for K = 5000
  goals = h.check(GOALS, {
      "cpu_seconds": at_k if backend == "cpu" else None,
      "jvae_vs_torch": seconds["torch_eager"] / seconds["jvae"] if "torch_eager" in runs
                       else None,
      "extra_memory_mb": None if extra_max is None or backend != "cpu" else extra_max / 2**20,
      "extra_memory_growth": max(larger) / mem_k if larger and mem_k else None,
      "h100_seconds": at_k if any(g in kind for g in ("H100", "H200")) else None})
  h.emit(h.record("evaluation", {
      "num_samples": k, "images": n, "target_images": TARGET_IMAGES, "extrapolated": scale != 1,
      "seconds": seconds["jvae"], "compile_s": compile_s, "batch_size": b, "chunk_size": c,
      "rows_per_step": c * b, "warmup_rounds": warmup, "extra_memory_bytes": memory,
      "log_marginal": estimate["jvae"][0],
      "mc_stderr": estimate["jvae"][1], **rounds.as_record(),
      "torch": None if "torch_eager" not in runs else {
          "seconds": seconds["torch_eager"], "device": device,
          "log_marginal": estimate["torch_eager"][0], "mc_stderr": estimate["torch_eager"][1],
          "agrees": agree, "threads": threads, "matmul_precision": matmul_precision},
      "data": data_name}, goals=goals, packages=("torch",)), args.out)
  if not all(math.isfinite(mean) for mean, _ in estimate.values()):
    h.log("error: a log-marginal estimate is not finite")
    return 1
  if agree is False:
    h.log(f"error: jvae and torch disagree by more than {AGREE_SE} standard errors")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
