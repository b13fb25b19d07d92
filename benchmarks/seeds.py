"""Seeds as an axis: N seeds trained by one vmapped program against N sequential runs.

The model is Burda et al.'s (2015) one-stochastic-layer VAE (784-200-200-50 tanh, mirrored
decoder, Bernoulli likelihood) trained on the single-sample ELBO with the analytic KL
(``jvae.elbo``), Adam 1e-3, batch 100, on binarized MNIST (random binary data if it is absent).
Each seed has its own initialisation, data order and sampling keys (``jvae.seed_keys`` and
``jvae.fit_init``). An epoch is S steps: the data is the first S·100 training images.

For each N (default 1, 4, 16, 64):

* **vmapped**: one ``jax.jit(jax.vmap(trainer.epoch, in_axes=(0, None)))`` call trains all N
  stacked states for one epoch (compiled once per N).
* **sequential**: N separate states, each run through ``jax.jit(trainer.epoch)`` one after the
  other (one compiled single-seed program, reused for every N); the time is the total for the N
  epochs (dispatch is asynchronous; the clock stops when the last result is ready).
* **jvae**: jvae's own seed program, ``jvae.make_epoch_fn(trainer, None, patience=None,
  seed_chunk=--seed-chunk)`` on a ``jvae.fit_init`` state: what ``jvae.fit`` and
  ``jvae train --seeds N`` run, without validation. With the default ``seed_chunk="auto"`` it is
  ``lax.map`` over chunks of 2 vmapped seeds on a CPU (one vmap over all N on a GPU/TPU, where
  this side is then the same program as *vmapped* and is not timed twice), and for N = 1 the
  plain single-seed program. Timed only where it differs from *vmapped*.

All donate their state. After compiling and ``--warmup`` untimed rounds, the sides are timed
one after another (the order flips each repeat, so load from other processes hits all alike) for
``--repeats`` rounds; the median time gives ``seed-steps/s = N·S / seconds``,
``ratio = vmapped / sequential`` and ``jvae_ratio = jvae / sequential`` seed-steps/s. Compile
time is reported separately. Each row also has ``cpu_time_ratio`` and ``jvae_cpu_time_ratio``:
the same ratios in seed-steps per CPU second of this process (all its threads;
``time.process_time``), a steadier measure of work on a machine shared with other jobs.

Goals, judged on the wall-clock ``jvae_ratio`` (jvae's seed program): on a GPU, >= 20 at N = 64;
on a CPU, >= 1.0 at every N > 1 (vmapped seeds cost no more per seed than sequential ones). The
plain one-vmap ``ratio`` is reported beside it. At N = 1 ``ratio`` is a control: a size-1 vmapped
program against the plain one, i.e. the cost of a batch axis alone.

Memory (per row, under ``memory``; all in bytes):

* ``vmapped_program``: XLA's buffer assignment for the compiled vmapped N-seed epoch
  (``Compiled.memory_analysis()``): ``argument`` (the N stacked states + the data), ``output``,
  ``temp`` (scratch), ``alias`` (outputs written in place of donated arguments),
  ``argument_output_temp`` = argument + output + temp (an upper bound on what the program
  needs; donated outputs are counted twice) and ``xla_peak`` (XLA's own peak estimate, when the
  backend reports one). A static, per-program number; on every backend.
* ``jvae_program``: the same for jvae's seed program, where it was timed.
* ``sequential_program``: the same for the single-seed program that the sequential runs reuse
  (identical for every N), and ``sequential_states`` = N × the bytes of one train state (what the
  sequential side keeps alive between its calls, besides the one program's scratch).
* ``process_max_rss``: the process's resident-set high-water mark (``getrusage``) after this
  row's runs. Process-wide and monotone: it includes Python, JAX, the data and every earlier row,
  so only its growth from row to row says anything about N.
* ``device_peak_bytes_in_use`` (GPU/TPU only, when the device reports memory stats): the
  allocator's peak since the process started, read after this row's runs; also monotone, so with
  N increasing it is the peak of the largest N so far.

Usage::

  JVAE_DATA_DIR=/path/to/data python -m benchmarks.seeds [--quick] [--seeds 1 4 16 64]
      [--steps S] [--repeats R] [--warmup W] [--out FILE.json] [--plot FILE.png]

Human-readable lines go to stderr; the last line on stdout is the JSON record.
"""

from __future__ import annotations

import argparse
import pathlib
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jvae
from jvae.training import seeds as jvae_fit

try:  # run as a module: python -m benchmarks.seeds
  from benchmarks import _common
except ImportError:  # run as a script: python benchmarks/seeds.py
  import _common

BATCH_SIZE = 100
LEARNING_RATE = 1e-3
DEFAULT_SEEDS = (1, 4, 16, 64)
DEFAULT_STEPS = 50  # long enough epochs to time on a noisy shared CPU; N = 64 takes ~3 min there
DEFAULT_REPEATS = 5
QUICK_SEEDS = (1, 4, 16)
QUICK_STEPS = 50
QUICK_REPEATS = 3
CPU_RATIO_MIN = 1.0
GPU_RATIO_AT_64_MIN = 20.0
GPU_GOAL_SEEDS = 64
DEFAULT_PLOT = pathlib.Path(__file__).resolve().parent / "results" / "seeds.png"


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--seeds", type=int, nargs="+", default=None,
                 help=f"numbers of seeds N (default {' '.join(map(str, DEFAULT_SEEDS))}; "
                      f"{' '.join(map(str, QUICK_SEEDS))} if --quick)")
  p.add_argument("--steps", type=int, default=None,
                 help=f"steps per epoch S, using the first S*{BATCH_SIZE} training images "
                      f"(default {DEFAULT_STEPS}; {QUICK_STEPS} if --quick)")
  p.add_argument("--repeats", type=int, default=None,
                 help=f"timed rounds per N; the median is reported (default {DEFAULT_REPEATS}; "
                      f"{QUICK_REPEATS} if --quick)")
  p.add_argument("--warmup", type=int, default=1,
                 help="untimed rounds per N after compiling (default 1)")
  p.add_argument("--quick", action="store_true",
                 help=f"short run: seeds {' '.join(map(str, QUICK_SEEDS))}, {QUICK_STEPS} steps, "
                      f"{QUICK_REPEATS} repeats")
  p.add_argument("--seed-chunk", default="auto",
                 help="seeds per vmapped chunk in jvae's seed program (jvae.make_epoch_fn's "
                      "seed_chunk): auto (2 on a CPU, all at once elsewhere) or an integer")
  p.add_argument("--seed", type=int, default=0, help="first seed (seeds are seed, seed+1, ...)")
  p.add_argument("--out", default=None, help="also write the JSON record to this file")
  p.add_argument("--plot", default=str(DEFAULT_PLOT),
                 help="PNG plot path (default benchmarks/results/seeds.png); '' for none")
  args = p.parse_args(argv)
  if args.seeds is None:
    args.seeds = list(QUICK_SEEDS if args.quick else DEFAULT_SEEDS)
  if args.steps is None:
    args.steps = QUICK_STEPS if args.quick else DEFAULT_STEPS
  if args.repeats is None:
    args.repeats = QUICK_REPEATS if args.quick else DEFAULT_REPEATS
  if any(n < 1 for n in args.seeds):
    p.error("--seeds must all be >= 1")
  args.seeds = sorted(set(args.seeds))
  if args.steps < 1:
    p.error("--steps must be >= 1")
  if args.repeats < 1:
    p.error("--repeats must be >= 1")
  if args.warmup < 0:
    p.error("--warmup must be >= 0")
  if args.seed_chunk != "auto":
    try:
      args.seed_chunk = int(args.seed_chunk)
    except ValueError:
      p.error(f"--seed-chunk must be auto or an integer, got {args.seed_chunk!r}")
    if args.seed_chunk < 1:
      p.error("--seed-chunk must be >= 1")
  return args


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


def program_memory(compiled) -> dict | None:
  """XLA's buffer sizes for a compiled program (see the module docstring), or None."""
  try:
    m = compiled.memory_analysis()
  except Exception:
    return None
  if m is None:
    return None
  out = {
      "argument": int(m.argument_size_in_bytes),
      "output": int(m.output_size_in_bytes),
      "temp": int(m.temp_size_in_bytes),
      "alias": int(m.alias_size_in_bytes),
      "generated_code": int(m.generated_code_size_in_bytes),
  }
  out["argument_output_temp"] = out["argument"] + out["output"] + out["temp"]
  peak = getattr(m, "peak_memory_in_bytes", None)
  out["xla_peak"] = int(peak) if peak else None
  return out


def tree_bytes(tree) -> int:
  return sum(int(leaf.nbytes) for leaf in jax.tree_util.tree_leaves(tree)
             if hasattr(leaf, "nbytes"))


def max_rss_bytes() -> int:
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(rss) * (1 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux


def device_peak_bytes() -> int | None:
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:
    return None
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return int(stats["peak_bytes_in_use"])


def mib(n: int | None) -> str:
  return "n/a" if n is None else f"{n / 2**20:.1f} MiB"


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def compile_fn(fn, *args):
  """AOT-compile ``jax.jit(fn, donate_argnums=0)``; returns (compiled, lower_s, compile_s)."""
  start = time.perf_counter()
  lowered = jax.jit(fn, donate_argnums=0).lower(*args)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  return compiled, lowered_at - start, time.perf_counter() - lowered_at


def run_vmapped(fn, state, data):
  """One vmapped epoch of all seeds; returns (state, metrics, wall seconds, CPU seconds)."""
  cpu, start = time.process_time(), time.perf_counter()
  state, metrics = fn(state, data)
  jax.block_until_ready((state, metrics))
  return state, metrics, time.perf_counter() - start, time.process_time() - cpu


def run_sequential(fn, states, data):
  """One epoch of each seed, one after another; returns (states, metrics list, total wall
  seconds, total CPU seconds)."""
  cpu, start = time.process_time(), time.perf_counter()
  outs = [fn(s, data) for s in states]
  jax.block_until_ready(outs)
  seconds = time.perf_counter() - start
  return [o[0] for o in outs], [o[1] for o in outs], seconds, time.process_time() - cpu


def program_name(n: int, chunk: int | None) -> str:
  """What jvae's seed program does with N seeds and chunk size k."""
  if n == 1:
    return "1 seed, no seed axis"
  if chunk is None or chunk >= n:
    return f"one vmap over {n}"
  if chunk == 1:
    return "lax.map over seeds"
  return f"lax.map over chunks of {chunk} vmapped seeds"


def run_side(side: str, fn, state, data):
  """One epoch of every seed on one side: ``sequential`` runs them one after another."""
  return (run_sequential if side == "sequential" else run_vmapped)(fn, state, data)


def unstack(tree, n: int) -> list:
  return [jax.tree_util.tree_map(lambda a, i=i: a[i], tree) for i in range(n)]


# --------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------


def device_name(info: dict) -> str:
  """The device for titles: the GPU/TPU kind, or on CPU the processor model and usable cores."""
  if info["jax_backend"] != "cpu":
    return f"{info['device_kind']} ({info['jax_backend']})"
  model = info["processor"]
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        model = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return f"CPU {model}, {info['cpu_usable']} usable cores"


def plot(rows: list[dict], path: str, *, device: str, backend: str, steps: int) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.ticker import NullFormatter, ScalarFormatter

  ns = [r["seeds"] for r in rows]
  vm = [r["vmapped_seed_steps_per_s"] for r in rows]
  sq = [r["sequential_seed_steps_per_s"] for r in rows]
  ratio = [r["ratio"] for r in rows]
  jv = [r["jvae_seed_steps_per_s"] for r in rows]
  jratio = [r["jvae_ratio"] for r in rows]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
  ax1.loglog(ns, vm, "o-", label="one vmap over N")
  ax1.loglog(ns, jv, "^-", label="jvae seed program")
  ax1.loglog(ns, sq, "s--", label="sequential (N runs)")
  ax1.set_xlabel("seeds N")
  ax1.set_ylabel("seed-steps / s")
  ax1.set_xticks(ns, [str(n) for n in ns])
  ax1.xaxis.set_minor_formatter(NullFormatter())
  ax1.yaxis.set_major_formatter(ScalarFormatter())
  ax1.yaxis.set_minor_formatter(NullFormatter())
  ax1.grid(True, which="both", alpha=0.3)
  ax1.legend()
  ax1.set_title("throughput")
  ax2.semilogx(ns, ratio, "o-", color="C0", label="one vmap / sequential")
  ax2.semilogx(ns, jratio, "^-", color="C1", label="jvae program / sequential")
  for n, r in zip(ns, jratio, strict=True):
    ax2.annotate(f"{r:.2f}", (n, r), textcoords="offset points", xytext=(0, 7), ha="center")
  if backend == "cpu":
    ax2.axhline(CPU_RATIO_MIN, color="k", ls=":", label=f"CPU goal >= {CPU_RATIO_MIN:g}")
  else:
    ax2.plot([GPU_GOAL_SEEDS], [GPU_RATIO_AT_64_MIN], "k*", ms=12,
             label=f"GPU goal >= {GPU_RATIO_AT_64_MIN:g} at N={GPU_GOAL_SEEDS}")
  ax2.set_xlabel("seeds N")
  ax2.set_ylabel("ratio of seed-steps / s")
  ax2.set_xticks(ns, [str(n) for n in ns])
  ax2.xaxis.set_minor_formatter(NullFormatter())
  ax2.set_ylim(bottom=0, top=max([*ratio, *jratio, CPU_RATIO_MIN if backend == "cpu"
                                  else GPU_RATIO_AT_64_MIN]) * 1.15)
  ax2.grid(True, which="both", alpha=0.3)
  ax2.legend()
  ax2.set_title("speed-up of vmapped seeds")
  fig.suptitle(f"jvae seeds: Burda 2015 VAE, batch {BATCH_SIZE}, {steps} steps/epoch "
               f"on {device}")
  fig.tight_layout()
  out = pathlib.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=110)
  plt.close(fig)


# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
  args = parse_args(argv)
  log = _common.log
  info = _common.machine_info()
  backend = info["jax_backend"]
  log(f"seeds: jax {info['versions']['jax']} on {device_name(info)}")

  train, _, _, data_name = _common.load_mnist_or_random()
  max_steps = train.shape[0] // BATCH_SIZE
  steps = args.steps
  if steps > max_steps:
    log(f"error: --steps {steps} needs {steps * BATCH_SIZE} examples; "
        f"the training set has {train.shape[0]} ({max_steps} steps)")
    return 2
  data = jax.device_put(jnp.asarray(train[: steps * BATCH_SIZE], jnp.float32))
  log(f"data: {data_name}, {data.shape[0]} x {data.shape[1]}, batch {BATCH_SIZE}, "
      f"{steps} steps per epoch; seeds {args.seeds}, {args.warmup} warm-up + "
      f"{args.repeats} timed rounds each")

  model = jvae.burda2015(event_shape=(data.shape[1],))
  tr = jvae.trainer(jvae.elbo(model), optax.adam(LEARNING_RATE), batch_size=BATCH_SIZE)
  vmapped_epoch = jax.vmap(tr.epoch, in_axes=(0, None))
  # jvae's own seed program (what jvae.fit and `jvae train --seeds N` run), without validation
  seed_epoch = jvae.make_epoch_fn(tr, None, patience=None, seed_chunk=args.seed_chunk)
  chunk = jvae_fit._resolve_seed_chunk(args.seed_chunk)

  def jvae_program(fs, data):
    fs, metrics = seed_epoch(fs, data, None)
    return fs, {"bound": metrics["train_bound"]}

  def init_states(n: int):
    """N stacked train states: seed i gets seed_keys' key i (init, shuffling and sampling)."""
    return jvae.fit_init(model, tr, jvae.seed_keys(args.seed, n), data[:2]).train

  # The single-seed program, compiled once and reused for every N.
  one = unstack(init_states(1), 1)[0]
  state_bytes = tree_bytes(one)
  seq_fn, seq_lower, seq_comp = compile_fn(tr.epoch, one, data)
  seq_compile = {"lower_s": seq_lower, "compile_s": seq_comp, "total_s": seq_lower + seq_comp}
  seq_memory = program_memory(seq_fn)
  log(f"compile sequential (1 seed, reused): trace+lower {seq_lower:.2f} s, "
      f"XLA compile {seq_comp:.2f} s; train state {mib(state_bytes)}")
  del one

  rows = []
  for n in args.seeds:
    stacked = init_states(n)
    vm_fn, vm_lower, vm_comp = compile_fn(vmapped_epoch, stacked, data)
    vm_memory = program_memory(vm_fn)
    states = unstack(stacked, n)  # the same N seeds for the sequential side
    log(f"N={n:>3}: compile vmapped: trace+lower {vm_lower:.2f} s, XLA compile {vm_comp:.2f} s; "
        f"program argument+output+temp "
        f"{mib(vm_memory and vm_memory['argument_output_temp'])}")
    fns = {"vmapped": vm_fn, "sequential": seq_fn}
    carry = {"vmapped": stacked, "sequential": states}
    # jvae's seed program differs from one vmap over all N when it squeezes a single seed or
    # trains the seeds in chunks
    chunked = n == 1 or (chunk is not None and 1 < chunk < n)
    if chunked:
      fit_state = jvae.fit_init(model, tr, jvae.seed_keys(args.seed, n), data[:2])
      ch_fn, ch_lower, ch_comp = compile_fn(jvae_program, fit_state, data)
      fns["jvae"], carry["jvae"] = ch_fn, fit_state
      log(f"N={n:>3}: compile jvae seed program ({program_name(n, chunk)}): trace+lower "
          f"{ch_lower:.2f} s, XLA compile {ch_comp:.2f} s")

    for i in range(args.warmup):
      for side in fns:
        carry[side], _, _, _ = run_side(side, fns[side], carry[side], data)
      log(f"N={n:>3}: warm-up {i + 1} done")

    times = {side: [] for side in fns}
    cpu_times = {side: [] for side in fns}
    last = {}
    for r in range(args.repeats):
      order = list(fns) if r % 2 == 0 else list(fns)[::-1]
      for side in order:
        carry[side], last[side], dt, cpu = run_side(side, fns[side], carry[side], data)
        times[side].append(dt)
        cpu_times[side].append(cpu)
      log(f"N={n:>3}: round {r + 1}/{args.repeats}: " + ", ".join(
          f"{side} {times[side][-1]:.3f} s ({n * steps / times[side][-1]:.1f} seed-steps/s, "
          f"CPU {cpu_times[side][-1]:.3f} s)" for side in fns))

    rate = {side: n * steps / statistics.median(times[side]) for side in fns}
    vm_rate, seq_rate = rate["vmapped"], rate["sequential"]
    ratio = vm_rate / seq_rate
    # The same ratio in seed-steps per CPU second of this process (all its threads): on a machine
    # shared with other jobs a steadier measure of the work each side does than the wall clock.
    cpu_ratio = statistics.median(cpu_times["sequential"]) / statistics.median(cpu_times["vmapped"])
    # jvae's seed program: the chunked one where it chunks, else the one vmap over all N
    jvae_side = "jvae" if chunked else "vmapped"  # one vmap over all N is jvae's program
    jvae_ratio = rate[jvae_side] / seq_rate
    jvae_cpu_ratio = (statistics.median(cpu_times["sequential"])
                      / statistics.median(cpu_times[jvae_side]))
    # All sides ran the same seeds for the same epochs: their training bounds should agree up
    # to floating-point reassociation (a check that the vmapped program trains N distinct seeds).
    vm_bounds = np.asarray(last["vmapped"]["bound"], np.float64)
    seq_bounds = np.asarray([m["bound"] for m in last["sequential"]], np.float64)
    others = [vm_bounds] + ([np.asarray(last["jvae"]["bound"], np.float64)] if chunked else [])
    finite = bool(all(np.all(np.isfinite(b)) for b in [seq_bounds, *others]))
    diff = float(max(np.max(np.abs(b - seq_bounds)) for b in others))
    memory = {
        "vmapped_program": vm_memory,
        "jvae_program": program_memory(fns["jvae"]) if chunked else None,
        "sequential_program": seq_memory,
        "sequential_states": n * state_bytes,
        "process_max_rss": max_rss_bytes(),
        "device_peak_bytes_in_use": device_peak_bytes(),
    }
    log(f"N={n:>3}: median seed-steps/s: vmapped {vm_rate:.1f}"
        + (f", jvae ({program_name(n, chunk)}) {rate['jvae']:.1f}" if chunked else "")
        + f", sequential {seq_rate:.1f}; ratio vmapped {ratio:.3f} (CPU-time {cpu_ratio:.3f})"
        + (f", jvae program {jvae_ratio:.3f} (CPU-time {jvae_cpu_ratio:.3f})" if chunked else "")
        + f"; bounds {'finite' if finite else 'NOT FINITE'} "
        f"(mean {vm_bounds.mean():.2f}, seeds {vm_bounds.min():.2f}..{vm_bounds.max():.2f}; "
        f"max |program - sequential| {diff:.2e}); max RSS {mib(memory['process_max_rss'])}"
        + ("" if memory["device_peak_bytes_in_use"] is None
           else f", device peak {mib(memory['device_peak_bytes_in_use'])}"))
    rows.append({
        "seeds": n,
        "vmapped_seed_steps_per_s": vm_rate,
        "sequential_seed_steps_per_s": seq_rate,
        "ratio": ratio,
        "jvae_program_name": program_name(n, chunk),
        "jvae_seed_steps_per_s": rate.get("jvae", vm_rate),
        "jvae_program": jvae_side,
        "jvae_ratio": jvae_ratio,
        "jvae_cpu_time_ratio": jvae_cpu_ratio,
        "compile_s": {"vmapped_lower_s": vm_lower, "vmapped_compile_s": vm_comp,
                      "vmapped_total_s": vm_lower + vm_comp,
                      "jvae_total_s": (ch_lower + ch_comp) if chunked else None,
                      "sequential_total_s": seq_compile["total_s"]},
        "memory": memory,
        "cpu_time_ratio": cpu_ratio,
        "epoch_s": times,
        "epoch_cpu_s": cpu_times,
        "final_bound_mean": float(vm_bounds.mean()),
        "bound_max_abs_diff": diff,
        "bounds_finite": finite,
    })
    del stacked, states, vm_fn, fns, carry

  by_n = {r["seeds"]: r for r in rows}
  if backend == "cpu":
    checked = [r["jvae_ratio"] for r in rows if r["seeds"] > 1]
    goal_met = bool(checked) and min(checked) >= CPU_RATIO_MIN
    goal_text = f"ratio >= {CPU_RATIO_MIN:g} at every N > 1"
    if not checked:
      goal_met = None
  else:
    row = by_n.get(GPU_GOAL_SEEDS)
    goal_met = None if row is None else row["jvae_ratio"] >= GPU_RATIO_AT_64_MIN
    goal_text = f"ratio >= {GPU_RATIO_AT_64_MIN:g} at N = {GPU_GOAL_SEEDS}"
  verdict = {True: "met", False: "NOT met", None: "not evaluated (N not measured)"}[goal_met]
  log(f"goal on {backend} ({goal_text}): {verdict}")
  log("summary: " + "; ".join(f"N={r['seeds']} jvae program {r['jvae_ratio']:.2f} "
                              f"({r['jvae_program_name']}), one vmap {r['ratio']:.2f}"
                              for r in rows))

  if args.plot:
    plot(rows, args.plot, device=device_name(info), backend=backend, steps=steps)
    log(f"plot: {args.plot}")

  all_finite = all(r["bounds_finite"] for r in rows)
  record = {
      "benchmark": "seeds",
      "rows": rows,
      "goal": {"cpu_ratio_min": CPU_RATIO_MIN, "gpu_ratio_at_64_min": GPU_RATIO_AT_64_MIN},
      "goal_checked": goal_text + " (jvae's seed program: jvae_ratio)",
      "seed_chunk": chunk,
      "goal_met": goal_met,
      "steps_per_epoch": steps,
      "batch_size": BATCH_SIZE,
      "repeats": args.repeats,
      "warmup_rounds": args.warmup,
      "num_examples": int(data.shape[0]),
      "data": data_name,
      "train_state_bytes": state_bytes,
      "sequential_compile_s": seq_compile,
      "device_name": device_name(info),
      "plot": args.plot or None,
      **info,
  }
  _common.emit(record, args.out)
  if not all_finite:
    log("error: a final training bound is not finite")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
