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
  ``jvae train --seeds N`` run, without validation. With the defaults ``seed_chunk="auto"`` and
  ``seed_interleave="auto"`` on a CPU it runs the plain single-seed steps of 4 seeds side by side
  in one scan body (``Trainer.interleaved_epoch``), ``lax.map`` over such groups (one vmap over all
  N on a GPU/TPU, where this side is then the same program as *vmapped* and is not timed twice),
  and for N = 1 the plain single-seed program. Timed only where it differs from *vmapped*.
* **jvae over D devices** (on a CPU, D = ``--host-devices``, default its usable cores, when
  D > 1 divides N): the same program with ``mesh=jvae.make_mesh(D, "seeds")`` on a state placed
  by ``jvae.place_fit_state(..., "seeds")``, i.e. ``jvae train --seeds N --devices D --parallel
  seeds``: each of the D CPU devices trains N / D seeds as its own program (``jax.shard_map``),
  so seeds run concurrently on the cores. The script starts JAX with D CPU devices for this
  (``jax_num_cpu_devices``, as ``JAX_NUM_CPU_DEVICES=D`` does; a choice made in the environment
  is kept); the other sides use one device, whose matmuls use every core as before.

Findings (2-core CPU, 50-step epochs): a vmapped matmul is a batched dot on XLA:CPU, 5–20% slower
per seed than the plain one (the N = 1 control is a size-1 vmap: ~0.8×); chunks of 2 vmapped
seeds measured 0.91–0.93× sequential, ``lax.map`` of the plain program ~1.0× (0.95–1.04), and
the seeds split over the 2 cores as devices 1.26–1.57× (one device's intra-op threads leave the
second core idle in every elementwise fusion and in small matmuls). On one device, the steps of
2 seeds in one scan body let XLA's thunk executor run one seed's elementwise fusions beside the
other's dots: 1.12–1.20× sequential for 8 seeds in groups of 2 (4: 1.06–1.12×, 8: 1.19–1.27×,
noise ±10%; compile 2.1 s for 2 against 1.6 s for one seed, 2.7 s for 4, 5.3 s for 8), bitwise
the same results. For 16 seeds in two runs, per seed-epoch: groups of 2 at 0.88 and 0.99 of
sequential's time, of 4 at 0.79 and 0.94, of 8 at 0.88 (one run), so 4 is the CPU default;
in the quick suite at 9993b26 groups of 2 read 1.05, 0.99, 1.17× at N = 4, 16, 64. A per-step
``lax.cond`` on "seed still active" inside that body lost it all (0.8–0.9×),
hence one cond per group per epoch. Whole epochs of 2 seeds side by side in one program (two
while loops) ran one after the other (1.0×). Data parallelism over the 2 CPU devices was
slower instead (0.70–0.83× one device: a gradient all-reduce every 2.4 ms step).

All donate their state. After compiling and ``--warmup`` untimed rounds, the sides are timed
one after another (the order rotating each repeat, ``_harness.alternate``) for ``--repeats``
rounds, times ceil(16 / N) below N = 16 (``rounds_for``: a 4-seed epoch is short, and its median
of 3 rounds swung by ±10% between runs); the median time gives ``seed-steps/s = N·S / seconds``,
``ratio = vmapped / sequential`` and ``jvae_ratio = jvae / sequential`` seed-steps/s. Compile
time is reported separately. Each row also has ``cpu_time_ratio`` and ``jvae_cpu_time_ratio``:
the same ratios in seed-steps per CPU second of this process (all its threads;
``time.process_time``), a steadier measure of work on a machine shared with other jobs.

Goals, judged on the wall-clock ``jvae_ratio`` (jvae's seed program): on a GPU, >= 20 at N = 64;
on a CPU, >= 1.0 at every N > 1 (seeds in one program cost no more per seed than sequential
runs), both on one device (``jvae_ratio``) and over the cores as devices
(``jvae_devices_ratio``). The plain one-vmap ``ratio`` is reported beside them. At N = 1
``ratio`` is a control: a size-1 vmapped program against the plain one, i.e. the cost of a batch
axis alone.

    JVAE_DATA_DIR=/path/to/data python -m benchmarks.seeds [--quick] [--seeds 1 4 16 64]
        [--steps S] [--repeats R] [--warmup W] [--host-devices D] [--out FILE.json]
        [--plot FILE.png]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jvae
from jvae.training import seeds as jvae_fit

from benchmarks import _harness as h

BATCH_SIZE = 100
LEARNING_RATE = 1e-3
DEFAULT_SEEDS = (1, 4, 16, 64)
DEFAULT_STEPS = 50  # long enough epochs to time on a noisy shared CPU; N = 64 takes ~3 min there
DEFAULT_REPEATS = 5
QUICK_SEEDS = (1, 4, 16, 64)
QUICK_STEPS = 50
QUICK_REPEATS = 3
EVEN_SEEDS = 16  # below this N, more rounds: every N times >= repeats x 16 seed-epochs
CPU_RATIO_MIN = 1.0
GPU_RATIO_AT_64_MIN = 20.0
GPU_GOAL_SEEDS = 64
GOALS = [h.Goal("cpu_worst_jvae_ratio", ">=", CPU_RATIO_MIN,
                "on a CPU, jvae (one device) / sequential seed-steps/s at every N > 1 (the "
                "worst N)"),
         h.Goal("cpu_worst_jvae_devices_ratio", ">=", CPU_RATIO_MIN,
                "on a CPU, jvae over the cores as devices / sequential seed-steps/s at every "
                "N > 1 (the worst N)"),
         h.Goal("gpu_jvae_ratio_at_64", ">=", GPU_RATIO_AT_64_MIN,
                f"on an accelerator, jvae / sequential seed-steps/s at N = {GPU_GOAL_SEEDS}")]
DEFAULT_PLOT = pathlib.Path(__file__).resolve().parent / "results" / "seeds.png"


def parse_args(argv=None):
  p = h.parser(__doc__)
  p.add_argument("--seeds", type=int, nargs="+", default=None,
                 help=f"numbers of seeds N (default {' '.join(map(str, DEFAULT_SEEDS))}; "
                      f"{' '.join(map(str, QUICK_SEEDS))} if --quick)")
  p.add_argument("--steps", type=int, default=None,
                 help=f"steps per epoch S, using the first S*{BATCH_SIZE} training images "
                      f"(default {DEFAULT_STEPS}; {QUICK_STEPS} if --quick)")
  p.add_argument("--repeats", type=int, default=None,
                 help=f"timed rounds per N, times ceil({EVEN_SEEDS} / N) below N = {EVEN_SEEDS} "
                      f"(short epochs are noisier); the median is reported (default "
                      f"{DEFAULT_REPEATS}; {QUICK_REPEATS} if --quick)")
  p.add_argument("--warmup", type=int, default=None,
                 help="untimed rounds per N after compiling (default 1; 0 if --quick, whose "
                      "medians of 3 rounds absorb a slower first round and which must fit the "
                      "quick suite's 12 minutes)")
  p.add_argument("--seed-chunk", default="auto", type=auto_or_positive,
                 help="seeds per vmapped chunk in jvae's seed program (jvae.make_epoch_fn's "
                      "seed_chunk): auto (1 on a CPU, all at once elsewhere) or an integer")
  p.add_argument("--seed-interleave", default="auto", type=auto_or_positive,
                 help="with un-batched seeds, seeds whose steps share one scan body "
                      "(jvae.make_epoch_fn's seed_interleave): auto (4 on a CPU) or an integer")
  p.add_argument("--host-devices", type=int, default=None,
                 help="CPU devices for the seed program split over devices (default: the "
                      "usable cores; 1 skips that side)")
  p.add_argument("--seed", type=int, default=0, help="first seed (seeds are seed, seed+1, ...)")
  p.add_argument("--plot", default=str(DEFAULT_PLOT),
                 help="PNG plot path (default benchmarks/results/seeds.png); '' for none")
  args = p.parse_args(argv)
  if args.seeds is None:
    args.seeds = list(QUICK_SEEDS if args.quick else DEFAULT_SEEDS)
  if args.steps is None:
    args.steps = QUICK_STEPS if args.quick else DEFAULT_STEPS
  if args.repeats is None:
    args.repeats = QUICK_REPEATS if args.quick else DEFAULT_REPEATS
  if args.warmup is None:
    args.warmup = 0 if args.quick else 1
  if any(n < 1 for n in args.seeds):
    p.error("--seeds must all be >= 1")
  args.seeds = sorted(set(args.seeds))
  if args.steps < 1:
    p.error("--steps must be >= 1")
  if args.repeats < 1:
    p.error("--repeats must be >= 1")
  if args.warmup < 0:
    p.error("--warmup must be >= 0")
  if args.host_devices is not None and args.host_devices < 1:
    p.error("--host-devices must be >= 1")
  return args


def auto_or_positive(text: str):
  """``auto`` or an integer >= 1 (``--seed-chunk``, ``--seed-interleave``)."""
  if text == "auto":
    return text
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"must be auto or an integer, got {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be auto or an integer >= 1, got {value}")
  return value


# --------------------------------------------------------------------------------------------


def rounds_for(n: int, repeats: int) -> int:
  """Timed rounds for N seeds: ``repeats`` × ceil(EVEN_SEEDS / N), so that a small N's short
  epochs are timed over as many seed-epochs as N = EVEN_SEEDS's (their medians are as steady)."""
  return repeats * max(1, -(-EVEN_SEEDS // n))


def program_name(n: int, chunk: int | None, interleave: int = 1) -> str:
  """What jvae's seed program does with N seeds (per device), chunk size k and interleave m."""
  if n == 1:
    return "1 seed, no seed axis"
  if chunk is None or chunk >= n:
    return f"one vmap over {n}"
  if chunk == 1 and interleave > 1:
    return (f"{min(interleave, n)} seeds' steps per scan body"
            + (", lax.map over the groups" if n > interleave else ""))
  if chunk == 1:
    return "lax.map over seeds"
  return f"lax.map over chunks of {chunk} vmapped seeds"


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
  from matplotlib.ticker import NullFormatter

  ns = [r["seeds"] for r in rows]
  vm = [r["vmapped_seed_steps_per_s"] for r in rows]
  sq = [r["sequential_seed_steps_per_s"] for r in rows]
  ratio = [r["ratio"] for r in rows]
  jv = [r["jvae_seed_steps_per_s"] for r in rows]
  jratio = [r["jvae_ratio"] for r in rows]
  dev = [(r["seeds"], r["jvae_devices_seed_steps_per_s"], r["jvae_devices_ratio"]) for r in rows
         if r.get("jvae_devices_ratio") is not None]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
  ax1.semilogx(ns, vm, "o-", label="one vmap over N")
  ax1.semilogx(ns, jv, "^-", label="jvae seed program")
  if dev:
    ax1.semilogx([d[0] for d in dev], [d[1] for d in dev], "D-", color="C2",
               label="jvae seed program over the cores as devices")
  ax1.semilogx(ns, sq, "s--", color="C3", label="sequential (N runs)")
  ax1.set_xlabel("seeds N")
  ax1.set_ylabel("seed-steps / s")
  ax1.set_xticks(ns, [str(n) for n in ns])
  ax1.xaxis.set_minor_formatter(NullFormatter())
  ax1.set_ylim(bottom=0, top=max([*vm, *jv, *sq, *(d[1] for d in dev)]) * 1.1)
  ax1.grid(True, which="both", alpha=0.3)
  ax1.legend(loc="lower right", fontsize="small")
  ax1.set_title("throughput")
  ax2.semilogx(ns, ratio, "o-", color="C0", label="one vmap / sequential")
  ax2.semilogx(ns, jratio, "^-", color="C1", label="jvae program / sequential")
  for n, r in zip(ns, jratio, strict=True):
    ax2.annotate(f"{r:.2f}", (n, r), textcoords="offset points", xytext=(0, -14), ha="center")
  if dev:
    ax2.semilogx([d[0] for d in dev], [d[2] for d in dev], "D-", color="C2",
                 label="jvae over the cores as devices / sequential")
    for n, _, r in dev:
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
  goal = CPU_RATIO_MIN if backend == "cpu" else GPU_RATIO_AT_64_MIN
  ax2.set_ylim(bottom=0, top=max([*ratio, *jratio, *(d[2] for d in dev), goal]) * 1.15)
  ax2.grid(True, which="both", alpha=0.3)
  ax2.legend(loc="lower right", fontsize="small")
  ax2.set_title("speed-up of seeds in one program")
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
  jvae.request_cpu_devices(args.host_devices or h.usable_cores())  # before JAX starts
  info = h.machine_info()
  backend = info["jax_backend"]
  h.log(f"seeds: jax {info['versions']['jax']} on {device_name(info)}")

  train, _, _, data_name = h.load_mnist_or_random()
  steps = args.steps
  if steps * BATCH_SIZE > train.shape[0]:
    h.log(f"error: --steps {steps} needs {steps * BATCH_SIZE} examples; the training set has "
          f"{train.shape[0]}")
    return 2
  data = jax.device_put(jnp.asarray(train[: steps * BATCH_SIZE], jnp.float32))
  h.log(f"data: {data_name}, {data.shape[0]} x {data.shape[1]}, batch {BATCH_SIZE}, "
        f"{steps} steps per epoch; seeds {args.seeds}, {args.warmup} warm-up + "
        f"{args.repeats} timed rounds each")

  model = jvae.burda2015(event_shape=(data.shape[1],))
  tr = jvae.trainer(jvae.elbo(model), optax.adam(LEARNING_RATE), batch_size=BATCH_SIZE)
  vmapped_epoch = jax.vmap(tr.epoch, in_axes=(0, None))
  # jvae's own seed program (what jvae.fit and `jvae train --seeds N` run), without validation
  seed_epoch = jvae.make_epoch_fn(tr, None, patience=None, seed_chunk=args.seed_chunk,
                                  seed_interleave=args.seed_interleave)
  chunk = jvae_fit._resolve_seed_chunk(args.seed_chunk)
  interleave = jvae_fit._resolve_seed_interleave(args.seed_interleave, chunk, tr)
  cpus = jax.devices("cpu") if backend == "cpu" else []
  host_devices = min(args.host_devices or len(cpus), len(cpus))
  mesh = jvae.make_mesh(host_devices, "seeds") if host_devices > 1 else None
  if mesh is not None:
    mesh_epoch = jvae.make_epoch_fn(tr, None, patience=None, seed_chunk=args.seed_chunk,
                                    seed_interleave=args.seed_interleave, mesh=mesh)
  h.log(f"CPU devices for the split seed program: {host_devices}"
        + ("" if mesh is not None else " (that side is not timed)"))

  def jvae_program(fs, data):
    fs, metrics = seed_epoch(fs, data, None)
    return fs, {"bound": metrics["train_bound"]}

  def jvae_devices_program(fs, data):
    fs, metrics = mesh_epoch(fs, data, None)
    return fs, {"bound": metrics["train_bound"]}

  def init_states(n: int):
    """N stacked train states: seed i gets seed_keys' key i (init, shuffling and sampling)."""
    return jvae.fit_init(model, tr, jvae.seed_keys(args.seed, n), data[:2]).train

  # The single-seed program, compiled once and reused for every N.
  seq_fn, seq_compile = h.compile_ahead(tr.epoch, unstack(init_states(1), 1)[0], data,
                                        donate=True)
  h.log(f"compile sequential (1 seed, reused): {seq_compile:.2f} s")

  rows = []
  for n in args.seeds:
    stacked = init_states(n)
    vm_fn, vm_compile = h.compile_ahead(vmapped_epoch, stacked, data, donate=True)
    sequential = unstack(stacked, n)  # the same N seeds for the sequential side

    def run_sequential(states=sequential):
      outs = [seq_fn(s, data) for s in states]  # dispatched asynchronously, timed to the last
      states[:] = [o[0] for o in outs]
      return [o[1] for o in outs]

    runs = {"vmapped": h.Carry(vm_fn, stacked, data), "sequential": run_sequential}
    # jvae's seed program differs from one vmap over all N when it squeezes a single seed or
    # trains the seeds in chunks
    chunked = n == 1 or (chunk is not None and chunk < n)
    jvae_compile = devices_compile = None
    if chunked:
      fit_state = jvae.fit_init(model, tr, jvae.seed_keys(args.seed, n), data[:2])
      ch_fn, jvae_compile = h.compile_ahead(jvae_program, fit_state, data, donate=True)
      runs["jvae"] = h.Carry(ch_fn, fit_state, data)
    split = mesh is not None and n > 1 and n % host_devices == 0
    if split:
      fit_state = jvae.place_fit_state(
          jvae.fit_init(model, tr, jvae.seed_keys(args.seed, n), data[:2]), mesh, "seeds")
      mesh_data = jax.device_put(data, jvae.replicated(mesh))
      dv_fn, devices_compile = h.compile_ahead(jvae_devices_program, fit_state, mesh_data,
                                               donate=True)
      runs["jvae_devices"] = h.Carry(dv_fn, fit_state, mesh_data)
    h.log(f"N={n:>3}: compile vmapped {vm_compile:.2f} s"
          + (f", jvae seed program ({program_name(n, chunk, interleave)}) {jvae_compile:.2f} s"
             if chunked else "")
          + (f", over {host_devices} devices {devices_compile:.2f} s" if split else ""))
    rounds = h.alternate(runs, rounds=rounds_for(n, args.repeats), warmup=args.warmup,
                         on_round=lambda r, t, n=n:
                         h.log(f"N={n:>3}: round {r + 1}: " + ", ".join(
                             f"{side} {n * steps / t.wall[side][-1]:.1f} seed-steps/s"
                             for side in t.wall)))

    rate = {side: n * steps / rounds.median(side) for side in runs}
    seq_rate = rate["sequential"]
    jvae_side = "jvae" if chunked else "vmapped"  # one vmap over all N is jvae's program
    cpu = {side: statistics.median(rounds.cpu[side]) for side in runs}
    # All sides ran the same seeds for the same epochs: their training bounds should agree up
    # to floating-point reassociation (a check that the vmapped program trains N distinct seeds).
    seq_bounds = np.asarray([m["bound"] for m in rounds.last["sequential"]], np.float64)
    others = [np.asarray(runs[side].out["bound"], np.float64) for side in runs
              if side != "sequential"]
    finite = bool(all(np.all(np.isfinite(b)) for b in [seq_bounds, *others]))
    diff = float(max(np.max(np.abs(b - seq_bounds)) for b in others))
    row = {
        "seeds": n,
        "vmapped_seed_steps_per_s": rate["vmapped"],
        "sequential_seed_steps_per_s": seq_rate,
        "ratio": rate["vmapped"] / seq_rate,
        "jvae_program_name": program_name(n, chunk, interleave),
        "jvae_seed_steps_per_s": rate[jvae_side],
        "jvae_program": jvae_side,
        "jvae_ratio": rate[jvae_side] / seq_rate,
        # the same ratios per CPU second of this process: steadier on a shared machine
        "cpu_time_ratio": cpu["sequential"] / cpu["vmapped"],
        "jvae_cpu_time_ratio": cpu["sequential"] / cpu[jvae_side],
        "jvae_devices_seed_steps_per_s": rate.get("jvae_devices"),
        "jvae_devices_ratio": rate["jvae_devices"] / seq_rate if split else None,
        "jvae_devices_cpu_time_ratio": (cpu["sequential"] / cpu["jvae_devices"] if split
                                        else None),
        "compile_s": {"vmapped": vm_compile, "jvae": jvae_compile, "sequential": seq_compile,
                      "jvae_devices": devices_compile},
        **rounds.as_record(),
        "final_bound_mean": float(others[0].mean()),
        "bound_max_abs_diff": diff,
        "bounds_finite": finite,
    }
    rows.append(row)
    h.log(f"N={n:>3}: ratio vmapped {row['ratio']:.3f}, jvae program {row['jvae_ratio']:.3f} "
          f"(CPU-time {row['jvae_cpu_time_ratio']:.3f})"
          + (f", over {host_devices} devices {row['jvae_devices_ratio']:.3f}" if split else "")
          + "; bounds "
          f"{'finite' if finite else 'NOT FINITE'}, max |program - sequential| {diff:.2e}")
    del stacked, sequential, runs, rounds

  multi = [r["jvae_ratio"] for r in rows if r["seeds"] > 1]
  multi_dev = [r["jvae_devices_ratio"] for r in rows
               if r["seeds"] > 1 and r["jvae_devices_ratio"] is not None]
  at64 = next((r["jvae_ratio"] for r in rows if r["seeds"] == GPU_GOAL_SEEDS), None)
  goals = h.check(GOALS, {
      "cpu_worst_jvae_ratio": min(multi) if backend == "cpu" and multi else None,
      "cpu_worst_jvae_devices_ratio": min(multi_dev) if backend == "cpu" and multi_dev else None,
      "gpu_jvae_ratio_at_64": at64 if backend != "cpu" else None})
  if args.plot:
    plot(rows, args.plot, device=device_name(info), backend=backend, steps=steps)
    h.log(f"plot: {args.plot}")
  h.emit(h.record("seeds", {
      "rows": rows, "seed_chunk": chunk, "seed_interleave": interleave,
      "host_devices": host_devices if mesh else 1,
      "steps_per_epoch": steps, "batch_size": BATCH_SIZE,
      "repeats": args.repeats, "warmup_rounds": args.warmup, "num_examples": int(data.shape[0]),
      "data": data_name, "device_name": device_name(info), "plot": args.plot or None},
      goals=goals), args.out)
  if not all(r["bounds_finite"] for r in rows):
    h.log("error: a final training bound is not finite")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
