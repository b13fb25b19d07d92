"""Evaluation cost: time and extra memory of ``jvae.log_marginal`` (K = 5000) over the test set.

The model is Burda et al.'s (2015) one-layer VAE (``jvae.burda2015()``), freshly initialised:
the cost does not depend on the parameter values. ``jvae.log_marginal(model, num_samples=K,
chunk_size=C, return_stderr=True)`` draws the K samples C at a time inside a ``lax.scan``, so one
step of the scan holds C × B rows of decoder activations and Bernoulli logits for a batch of B
images, whatever K is.

Execution (``--mode``):
  loop   the per-batch function is jitted (compiled ahead of time) and the host loops over the
         device-resident batches, batch i getting ``fold_in(key, i)`` (the default);
  scan   one program: ``jvae.evaluate`` scans over all batches (same keys, hence the same values;
         when B does not divide N it pads a copy of the data, which then counts as extra memory);
  both   time both (loop first) and report the faster as ``seconds``.

Extra memory is what the compiled program allocates beyond its inputs (parameters and data):
``compiled.memory_analysis()`` temp + output bytes, for K = 500, 5000 and 50000 at the same
C and B (only compiled, never run, for the K that is not timed), to show that it does not grow
with K. On GPUs the device's peak-bytes counter around the timed run is reported as well.

Defaults: B = 100 on CPU and 10000 (all images in one batch) on accelerators;
C = the largest balanced chunk with C × B ≤ ``--max-rows`` (4096; the program holds about three
C × B × 784 float32 buffers — the logits, logits + bias and softplus(logits) — so 4096 rows keep
it near 40 MB). ``--quick`` times K = 5000 on 1000 images and extrapolates ×10
(``"extrapolated": true``).

If the CPU misses its goal (or with ``--profile``), one scan step is taken apart: the RNG, the
50→200→200 decoder layers, the 200→784 output layer, the Bernoulli log-prob, and alternatives
(a single-consumer log-prob for binary x, a bf16 output layer, the ``rbg`` PRNG), with FLOP counts
and achieved GFLOP/s.

Goals: K = 5000 on 10,000 images ≤ 5 minutes on the 2-core CPU with ≤ 64 MB extra memory whatever
K is; ≤ 1 s on an H100.

Usage::

  JVAE_DATA_DIR=/path/to/data python -m benchmarks.evaluation [--quick] [--num-samples K]
      [--images N] [--batch-size B] [--chunk-size C] [--mode loop|scan|both] [--profile]
      [--out FILE.json]

Human-readable lines go to stderr; the last line on stdout is the JSON record.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jvae

try:  # run as a module: python -m benchmarks.evaluation
  from benchmarks import _common
except ImportError:  # run as a script: python benchmarks/evaluation.py
  import _common

log = _common.log

TARGET_IMAGES = 10000
MEMORY_KS = (500, 5000, 50000)
DEFAULT_MAX_ROWS = 4096
CPU_SECONDS_MAX = 300.0
EXTRA_MEMORY_MAX = 64 * 2**20
H100_SECONDS_MAX = 1.0
HIDDEN, LATENT = 200, 50  # burda2015: 784-200-200-50


def default_chunk(num_samples: int, batch_size: int, max_rows: int) -> int:
  """The largest balanced chunk with chunk × batch ≤ max_rows (at least 1), wasting < 1 per step."""
  cap = max(1, max_rows // batch_size)
  steps = -(-num_samples // cap)
  return -(-num_samples // steps)


def flops_per_sample(dim: int) -> dict:
  """Multiply-add FLOPs (2 per MAC) of the decoder for one z, and the elementwise work."""
  return {
      "decoder_hidden": 2 * (LATENT * HIDDEN + HIDDEN * HIDDEN),
      "decoder_output": 2 * HIDDEN * dim,
      "decoder_total": 2 * (LATENT * HIDDEN + HIDDEN * HIDDEN + HIDDEN * dim),
      "encoder_per_image": 2 * (dim * HIDDEN + HIDDEN * HIDDEN + 2 * HIDDEN * LATENT),
      "softplus_per_sample": dim,  # each = exp + log1p (two transcendentals)
      "tanh_per_sample": 2 * HIDDEN,
      "normals_per_sample": LATENT,
  }


def memory_stats(compiled) -> dict:
  """temp/output/argument bytes of a compiled program; ``extra`` = temp + output − alias."""
  ma = compiled.memory_analysis()
  if ma is None:
    return {"temp": None, "output": None, "argument": None, "extra": None}
  temp, out, alias = ma.temp_size_in_bytes, ma.output_size_in_bytes, ma.alias_size_in_bytes
  return {"temp": temp, "output": out, "argument": ma.argument_size_in_bytes,
          "extra": temp + out - alias}


def device_memory():
  """``(bytes_in_use, peak_bytes_in_use)`` of the default device, or None (e.g. on CPU)."""
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # backends without the counters
    return None
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return stats.get("bytes_in_use", 0), stats["peak_bytes_in_use"]


def _aot(fn, *args):
  """Lower and compile ``jax.jit(fn)`` for ``args``; returns (compiled, seconds)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - start


def _timed(fn, *args, repeats: int = 5):
  """Median wall seconds and median process CPU seconds of ``fn(*args)``, after one untimed call.

  CPU seconds count the work of all threads and not the time lost to other processes, so
  ``cpu / cpu_usable`` estimates the wall time on an otherwise idle machine.
  """
  jax.block_until_ready(fn(*args))
  walls, cpus = [], []
  for _ in range(repeats):
    w0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    walls.append(time.perf_counter() - w0)
    cpus.append(time.process_time() - c0)
  return statistics.median(walls), statistics.median(cpus)


# --------------------------------------------------------------------------------------------
# The two ways to run the evaluation.
# --------------------------------------------------------------------------------------------


def run_loop(compiled, params, key, batches, n: int):
  """Host loop over batches; returns (mean log p(x), its stderr, seconds)."""
  start = time.perf_counter()
  outs = [compiled(params, jax.random.fold_in(key, i), x) for i, x in enumerate(batches)]
  vals, ses = zip(*jax.device_get(outs), strict=True)
  seconds = time.perf_counter() - start
  vals, ses = np.concatenate(vals)[:n], np.concatenate(ses)[:n]
  return float(vals.mean()), float(np.sqrt(np.sum(ses.astype(np.float64) ** 2)) / n), seconds


def run_scan(compiled, params, key, data):
  start = time.perf_counter()
  mean, se = jax.device_get(compiled(params, key, data))
  return float(mean), float(se), time.perf_counter() - start


# --------------------------------------------------------------------------------------------
# Where the time goes: one scan step (C samples × B images) taken apart.
# --------------------------------------------------------------------------------------------


def profile_step(model, params, x, chunk: int, key, *, repeats: int, cores: int) -> dict:
  """Time the pieces of one ``log_marginal`` scan step on ``x`` (B images) with ``chunk`` samples.

  Each piece is compiled on its own from materialised inputs, so the pieces need not add up to
  the whole step exactly (XLA fuses across them in the real program). Rates are per wall second
  and per CPU (core) second; the latter is robust to other processes taking the cores.
  """
  b, dim = x.shape
  rows = chunk * b
  dec = params["params"]["decoder"]
  w0, b0 = dec["network"]["dense_0"]["kernel"], dec["network"]["dense_0"]["bias"]
  w1, b1 = dec["network"]["dense_1"]["kernel"], dec["network"]["dense_1"]["bias"]
  w2, b2 = dec["head"]["logits"]["kernel"], dec["head"]["logits"]["bias"]
  sign = 1.0 - 2.0 * x  # for binary x: log p(x|l) = −softplus((1 − 2x) l)

  def hidden(z):
    return jnp.tanh(jnp.tanh(z @ w0 + b0) @ w1 + b1)

  def output(h):
    return h @ w2 + b2

  def output_bf16(h):
    return jnp.dot(h.astype(jnp.bfloat16), w2.astype(jnp.bfloat16),
                   preferred_element_type=jnp.float32) + b2

  def log_prob(logits):  # the library's path: Independent(StableBernoulli).log_prob
    return jvae.bernoulli(logits).log_prob(x)

  def log_prob_single(logits):
    return -jnp.sum(jax.nn.softplus(sign * logits), axis=-1)

  z = jax.random.normal(key, (chunk, b, LATENT))
  h = jax.jit(hidden)(z)
  logits = jax.jit(output)(h)
  key_rbg = jax.random.key(1, impl="rbg")
  one_step = jvae.log_marginal(model, num_samples=chunk, chunk_size=chunk)
  out_flops = 2 * rows * HIDDEN * dim
  fl = flops_per_sample(dim)

  pieces = {
      "rng_normal_threefry": (lambda k: jax.random.normal(k, (chunk, b, LATENT)), (key,), 0),
      "rng_normal_rbg": (lambda k: jax.random.normal(k, (chunk, b, LATENT)), (key_rbg,), 0),
      "decoder_hidden_50_200_200": (hidden, (z,), rows * fl["decoder_hidden"]),
      "decoder_output_200_784": (output, (h,), out_flops),
      "decoder_output_200_784_bf16": (output_bf16, (h,), out_flops),
      "bernoulli_log_prob": (log_prob, (logits,), 0),
      "output_plus_log_prob": (lambda h: log_prob(output(h)), (h,), out_flops),
      "output_plus_log_prob_single_consumer": (lambda h: log_prob_single(output(h)), (h,),
                                               out_flops),
      # one scan step + the encoder once (1/num_chunks of the encoder's share in the real run)
      "whole_step_threefry": (one_step, (params, key, x), None),
      "whole_step_rbg": (one_step, (params, key_rbg, x), None),
  }
  whole_flops = rows * fl["decoder_total"] + b * fl["encoder_per_image"]
  out = {}
  for name, (fn, args, flops) in pieces.items():
    compiled, _ = _aot(fn, *args)
    wall, cpu = _timed(compiled, *args, repeats=repeats)
    flops = whole_flops if flops is None else flops
    out[name] = {"seconds": wall, "cpu_seconds": cpu,
                 "gflop_per_s": flops / wall / 1e9 if flops else None,
                 "gflop_per_core_s": flops / cpu / 1e9 if flops and cpu > 0 else None,
                 "extra_bytes": memory_stats(compiled)["extra"]}
    log(f"  {name:>38}: {wall * 1e3:8.2f} ms wall, {cpu * 1e3:8.2f} ms CPU per step"
        + (f", {flops / cpu / 1e9:6.1f} GFLOP per core-s" if flops and cpu > 0 else "")
        + f", extra {out[name]['extra_bytes'] / 2**20:.1f} MiB")

  # What the alternatives would cost in accuracy (on this, untrained, model).
  lp = jax.jit(log_prob)(logits)
  lp_single = jax.jit(log_prob_single)(logits)
  lp_bf16 = jax.jit(lambda h: log_prob(output_bf16(h)))(h)
  accuracy = {
      "single_consumer_max_abs_diff_nats": float(jnp.max(jnp.abs(lp_single - lp))),
      "bf16_output_mean_abs_diff_nats": float(jnp.mean(jnp.abs(lp_bf16 - lp))),
      "bf16_output_mean_diff_nats": float(jnp.mean(lp_bf16 - lp)),
  }

  # Chunk size: rows per scan step against time per sample (one batch, K = 1000).
  sweep = {}
  for r in (400, 1000, 2000, 4000, 8000, 16000):
    c = max(1, r // b)
    f = jvae.log_marginal(model, num_samples=1000, chunk_size=c)
    compiled, _ = _aot(f, params, key, x)
    wall, cpu = _timed(compiled, params, key, x, repeats=max(1, repeats // 2))
    samples = -(-1000 // c) * c * b
    sweep[str(c * b)] = {"chunk": c, "us_per_sample_wall": wall / samples * 1e6,
                         "us_per_sample_core": cpu / samples * 1e6,
                         "extra_bytes": memory_stats(compiled)["extra"]}
    log(f"  chunk sweep C={c:>4} (C*B={c * b:>6} rows): {wall / samples * 1e6:6.3f} us/sample "
        f"wall, {cpu / samples * 1e6:6.3f} core-us/sample, extra "
        f"{sweep[str(c * b)]['extra_bytes'] / 2**20:6.1f} MiB")

  # A dense-matmul reference for this machine: a large f32 GEMM.
  big = jnp.ones((2048, 2048), jnp.float32)
  gemm, _ = _aot(lambda a: a @ a, big)
  gemm_wall, gemm_cpu = _timed(gemm, big, repeats=repeats)
  return {"chunk": chunk, "batch": b, "rows": rows, "cores": cores, "pieces": out,
          "accuracy": accuracy, "chunk_sweep": sweep,
          "reference_gemm_2048_gflop_per_s": 2 * 2048**3 / gemm_wall / 1e9,
          "reference_gemm_2048_gflop_per_core_s": 2 * 2048**3 / gemm_cpu / 1e9}


def analyse(profile: dict, total_steps: int, dim: int) -> dict:
  """Extrapolate the per-step pieces to the whole evaluation (in core-seconds / cores)."""
  p, cores = profile["pieces"], profile["cores"]

  def whole_run(name):  # estimated wall seconds on an idle machine with `cores` cores
    return p[name]["cpu_seconds"] * total_steps / cores

  parts = {
      "rng (threefry normals)": "rng_normal_threefry",
      "decoder 50→200→200 (dots + tanh)": "decoder_hidden_50_200_200",
      "decoder 200→784 dot": "decoder_output_200_784",
      "bernoulli log-prob (softplus + x·l, sum)": "bernoulli_log_prob",
  }
  est = {label: whole_run(name) for label, name in parts.items()}
  total_parts = sum(est.values())
  fl = flops_per_sample(dim)
  return {
      "steps_in_evaluation": total_steps,
      "idle_estimate_s": {"whole_step": whole_run("whole_step_threefry"),
                          "sum_of_pieces": total_parts, **est},
      "share_of_pieces": {k: v / total_parts for k, v in est.items()},
      "flops_per_sample": fl,
      "output_layer_share_of_flops": fl["decoder_output"] / fl["decoder_total"],
      "idle_estimate_with_rbg_s": whole_run("whole_step_rbg"),
      "single_consumer_log_prob_saves_s": (whole_run("output_plus_log_prob")
                                           - whole_run("output_plus_log_prob_single_consumer")),
      "bf16_output_dot_saves_s": (whole_run("decoder_output_200_784")
                                  - whole_run("decoder_output_200_784_bf16")),
  }


# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--num-samples", "-k", type=int, default=5000, help="K (default 5000)")
  p.add_argument("--images", type=int, default=None,
                 help=f"test images to evaluate (default {TARGET_IMAGES}; 1000 if --quick, "
                      "extrapolated to 10000)")
  p.add_argument("--batch-size", type=int, default=None,
                 help="images per batch B (default 100 on CPU, all images up to 10000 otherwise)")
  p.add_argument("--chunk-size", type=int, default=None,
                 help="samples per scan step C (default: the largest balanced chunk with "
                      "C*B <= --max-rows)")
  p.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS,
                 help=f"row budget C*B for the default chunk (default {DEFAULT_MAX_ROWS})")
  p.add_argument("--mode", choices=("loop", "scan", "both"), default="loop",
                 help="host loop over jitted batches, one scanned program, or time both")
  p.add_argument("--repeats", type=int, default=1, help="timed runs; the median is reported")
  p.add_argument("--profile", dest="profile", action="store_true", default=None,
                 help="take one scan step apart (default: only when the CPU misses its goal)")
  p.add_argument("--no-profile", dest="profile", action="store_false")
  p.add_argument("--profile-repeats", type=int, default=5)
  p.add_argument("--quick", action="store_true",
                 help="1000 images, extrapolated to 10000 (\"extrapolated\": true)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="also write the JSON record to this file")
  args = p.parse_args(argv)
  if args.images is None:
    args.images = 1000 if args.quick else TARGET_IMAGES
  for name in ("num_samples", "images", "batch_size", "chunk_size", "max_rows", "repeats"):
    value = getattr(args, name)
    if value is not None and value < 1:
      p.error(f"--{name.replace('_', '-')} must be >= 1")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  info = _common.machine_info()
  backend = info["jax_backend"]
  log(f"evaluation: jax {info['versions']['jax']} on {backend} ({info['device_kind']}), "
      f"{info['cpu_usable']} usable CPUs")

  _, _, test, data_name = _common.load_mnist_or_random()
  n = args.images
  if n > test.shape[0]:
    log(f"error: --images {n} but the test set has {test.shape[0]} images")
    return 2
  dim = test.shape[1]
  k = args.num_samples
  b = args.batch_size or (100 if backend == "cpu" else TARGET_IMAGES)
  b = min(b, n)
  c = min(args.chunk_size or default_chunk(k, b, args.max_rows), k)
  num_batches = -(-n // b)
  num_chunks = -(-k // c)
  log(f"data: {data_name}, {n} test images x {dim}; K={k}, batch B={b} ({num_batches} batches), "
      f"chunk C={c} ({num_chunks} scan steps, C*B={c * b} rows, logits "
      f"{c * b * dim * 4 / 2**20:.1f} MiB), mode {args.mode}")

  x_all = np.zeros((num_batches * b, dim), np.float32)
  x_all[:n] = test[:n]
  data = jax.device_put(jnp.asarray(x_all[:n]))
  batches = [jax.device_put(jnp.asarray(x_all[i * b:(i + 1) * b])) for i in range(num_batches)]
  model = jvae.burda2015(event_shape=(dim,))
  key = jax.random.key(args.seed)
  params = model.init(jax.random.fold_in(key, 1), batches[0])

  def bound(num_samples):
    return jvae.log_marginal(model, num_samples=num_samples, chunk_size=c, return_stderr=True)

  # Extra memory for several K at the same C and B (compiled, not run, except the timed K).
  compiled_batch, compile_s = _aot(bound(k), params, key, batches[0])
  log(f"compile per-batch program: {compile_s:.2f} s")
  memory = {}
  for kk in sorted({*MEMORY_KS, k}):
    compiled = compiled_batch if kk == k else _aot(bound(kk), params, key, batches[0])[0]
    memory[str(kk)] = memory_stats(compiled)
    log(f"  K={kk:>6}: extra {memory[str(kk)]['extra'] / 2**20:7.2f} MiB "
        f"(temp {memory[str(kk)]['temp']}, output {memory[str(kk)]['output']} bytes)")

  results, device_mem = {}, {}
  modes = ("loop", "scan") if args.mode == "both" else (args.mode,)
  for mode in modes:
    if mode == "loop":
      compiled, comp_s = compiled_batch, compile_s
      jax.block_until_ready(compiled(params, key, batches[0]))  # untimed warm call
      run = functools.partial(run_loop, compiled, params, key, batches, n)
    else:
      def whole(p, kk, d):
        return jvae.evaluate(bound(k), p, kk, d, batch_size=b)

      compiled, comp_s = _aot(whole, params, key, data)
      log(f"compile scanned program: {comp_s:.2f} s")
      run = functools.partial(run_scan, compiled, params, key, data)
    before = device_memory()
    cpu0 = time.process_time()
    runs = [run() for _ in range(args.repeats)]
    cpu_s = time.process_time() - cpu0
    after = device_memory()
    secs = statistics.median(r[2] for r in runs)
    results[mode] = {"seconds_measured": secs, "compile_s": comp_s, "runs_s": [r[2] for r in runs],
                     "process_cpu_s": cpu_s / args.repeats,
                     "cpu_per_wall": cpu_s / sum(r[2] for r in runs),
                     "log_marginal": runs[-1][0], "stderr": runs[-1][1],
                     "extra_memory_bytes": memory_stats(compiled)["extra"]}
    if before and after:
      device_mem[mode] = {"bytes_in_use_before": before[0], "peak_before": before[1],
                          "peak_after": after[1],
                          "peak_extra_bytes": max(0, after[1] - before[0])}
    log(f"{mode}: {secs:.2f} s for {n} images (K={k}), log p(x) ≈ {runs[-1][0]:.3f} "
        f"± {runs[-1][1]:.3f} (untrained model); process CPU/wall "
        f"{results[mode]['cpu_per_wall']:.2f} of {info['cpu_usable']} cores")

  best = min(results, key=lambda m: results[m]["seconds_measured"])
  measured = results[best]["seconds_measured"]
  extrapolated = n != TARGET_IMAGES
  seconds = measured * TARGET_IMAGES / n
  # Process CPU seconds / usable cores: the wall time this work would take on an idle machine
  # (an estimate that assumes the run would use every core; compare with "seconds").
  idle_estimate = results[best]["process_cpu_s"] * TARGET_IMAGES / n / info["cpu_usable"]
  samples = num_chunks * c * n  # drawn, including the masked tail of the last chunk
  fl = flops_per_sample(dim)
  run_flops = samples * fl["decoder_total"] + n * fl["encoder_per_image"]
  extra_max = max(v["extra"] for v in memory.values() if v["extra"] is not None)
  goals = {"cpu_seconds_max": CPU_SECONDS_MAX, "extra_memory_max_bytes": EXTRA_MEMORY_MAX,
           "h100_seconds_max": H100_SECONDS_MAX}
  goals_met = {
      "cpu_seconds": seconds <= CPU_SECONDS_MAX if backend == "cpu" else None,
      "extra_memory": extra_max <= EXTRA_MEMORY_MAX,
      "h100_seconds": seconds <= H100_SECONDS_MAX if "H100" in info["device_kind"] else None,
  }
  log(f"{'extrapolated ' if extrapolated else ''}{seconds:.1f} s for {TARGET_IMAGES} images "
      f"({best} mode; {run_flops / measured / 1e9:.1f} GFLOP/s of decoder/encoder matmuls; "
      f"{idle_estimate:.1f} s estimated on an idle machine from process CPU time); "
      f"extra memory ≤ {extra_max / 2**20:.1f} MiB over K in {sorted(map(int, memory))}")
  log("goals: " + ", ".join(f"{name} {'met' if ok else 'NOT met'}"
                            for name, ok in goals_met.items() if ok is not None))

  record = {
      "benchmark": "evaluation",
      "num_samples": k,
      "images": n,
      "target_images": TARGET_IMAGES,
      "extrapolated": extrapolated,
      "seconds": seconds,
      "seconds_measured": measured,
      "idle_estimate_s": idle_estimate,
      "compile_s": results[best]["compile_s"],
      "mode": best,
      "modes": results,
      "batch_size": b,
      "chunk_size": c,
      "rows_per_step": c * b,
      "scan_steps_per_batch": num_chunks,
      "extra_memory_bytes": {kk: v["extra"] for kk, v in memory.items()},
      "memory_analysis": memory,
      "device_memory": device_mem or None,
      "flops_per_sample": fl,
      "achieved_gflop_per_s": run_flops / measured / 1e9,
      "goals": goals,
      "goals_met": goals_met,
      "data": data_name,
      **info,
  }

  want_profile = args.profile
  if want_profile is None:
    want_profile = backend == "cpu" and seconds > CPU_SECONDS_MAX
  if want_profile:
    log(f"profiling one scan step (C={c}, B={b}):")
    prof = profile_step(model, params, batches[0], c, jax.random.fold_in(key, 2),
                        repeats=args.profile_repeats, cores=info["cpu_usable"])
    steps_total = -(-TARGET_IMAGES // b) * num_chunks
    analysis = analyse(prof, steps_total, dim)
    record["profile"] = prof
    record["analysis"] = analysis
    est = analysis["idle_estimate_s"]
    log(f"  idle-machine estimate for {TARGET_IMAGES} images ({steps_total} steps, from CPU "
        f"time / {info['cpu_usable']} cores): whole steps {est['whole_step']:.0f} s; sum of the "
        f"pieces {est['sum_of_pieces']:.0f} s = " + " + ".join(
            f"{k} {v:.0f} s" for k, v in est.items() if k not in ("whole_step", "sum_of_pieces")))
    log("  share of the pieces: " + ", ".join(
        f"{name} {share:.0%}" for name, share in analysis["share_of_pieces"].items()))
    log(f"  reference 2048² f32 GEMM: {prof['reference_gemm_2048_gflop_per_core_s']:.0f} GFLOP "
        f"per core-s; with the rbg PRNG ~{analysis['idle_estimate_with_rbg_s']:.0f} s; "
        f"single-consumer log-prob saves ~{analysis['single_consumer_log_prob_saves_s']:.0f} s; "
        f"bf16 output dot saves ~{analysis['bf16_output_dot_saves_s']:.0f} s (mean |Δ log p| "
        f"{prof['accuracy']['bf16_output_mean_abs_diff_nats']:.3f} nats per sample)")

  _common.emit(record, args.out)
  if not all(math.isfinite(r["log_marginal"]) for r in results.values()):
    log("error: a log-marginal estimate is not finite")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
