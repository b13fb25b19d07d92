"""Mixed precision: speed and the effect on the bound of ``jvae.mixed_precision`` (bf16 matmuls).

The model is Burda et al.'s (2015) one-stochastic-layer VAE (``jvae.burda2015``), single-sample
ELBO with the analytic KL, Adam 1e-3, batch 100, on binarized MNIST (random binary data if it is
absent). Two sides from the same initialisation and keys: float32, and the same model wrapped
by ``jvae.mixed_precision(model, dtype="bfloat16")`` (every ``nn.Dense`` matmul, forward and
backward, with bf16 operands and float32 accumulation; the parameters stay float32).

* Training: one epoch of S steps each, compiled ahead of time, ``--warmup`` untimed epochs then
  ``--rounds`` timed ones, alternating (``_harness.alternate``); steps/s is the median.
* Evaluation: ``jvae.log_marginal`` with K = ``--eval-samples`` on the first ``--eval-images``
  test images (``jvae.evaluate_pointwise``), float32 and bf16, alternating for ``--rounds``.
* The effect on the bound, after training: (a) *evaluation*: the float32-trained parameters'
  per-image log p̂(x) evaluated with bf16 matmuls minus the same with float32, same samples
  (mean, mean |Δ|, and the mean in units of the estimates' Monte-Carlo standard error);
  (b) *training*: the bf16-trained parameters' float32 test estimate minus the float32-trained
  ones' (one seed each, so this includes seed-to-seed noise from the two diverging runs).

On an accelerator a third side, ``float32_highest``, is the float32 model compiled under
``jax.default_matmul_precision("highest")``: there the backend's default float32 matmul may be
TF32 (recent NVIDIA GPUs), so ``float32`` − ``float32_highest`` (``tf32_*`` fields, the same two
effects) measures what that default does to the bound. On a CPU float32 dots are float32 and the
side is not run unless ``--highest-side`` asks for it.

No goal: the issue asks for the option and its measured effect, never a silent default.

    JVAE_DATA_DIR=/path/to/data python -m benchmarks.precision [--quick] [--steps S]
        [--rounds R] [--eval-samples K] [--eval-images N] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jvae
from benchmarks import _harness as h

BATCH_SIZE = 100
LEARNING_RATE = 1e-3


def parse_args(argv=None):
  p = h.parser(__doc__)
  p.add_argument("--steps", type=int, default=None, help="steps per epoch (default 500; 100 "
                 "if --quick)")
  p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 9; 5 if "
                 "--quick)")
  p.add_argument("--warmup", type=int, default=1, help="untimed epochs after compiling")
  p.add_argument("--eval-samples", type=int, default=None, help="K (default 5000; 500 if "
                 "--quick)")
  p.add_argument("--eval-images", type=int, default=None, help="test images (default 1000; "
                 "200 if --quick)")
  p.add_argument("--highest-side", action=argparse.BooleanOptionalAction, default=None,
                 help="also run float32 at the 'highest' matmul precision (default: off a CPU)")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  q = args.quick
  args.steps = args.steps or (100 if q else 500)
  args.rounds = args.rounds or (5 if q else 9)
  args.eval_samples = args.eval_samples or (500 if q else 5000)
  args.eval_images = args.eval_images or (200 if q else 1000)
  if min(args.steps, args.rounds, args.eval_samples, args.eval_images) < 1 or args.warmup < 0:
    p.error("--steps, --rounds, --eval-samples and --eval-images must be >= 1, --warmup >= 0")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  info = h.machine_info()
  h.log(f"precision: jax {info['versions']['jax']} on {info['jax_backend']}")
  train, _, test, data_name = h.load_mnist_or_random()
  data = jax.device_put(jnp.asarray(train[: args.steps * BATCH_SIZE], jnp.float32))
  test_x = jnp.asarray(test[: args.eval_images], jnp.float32)

  model = jvae.burda2015(event_shape=(data.shape[1],))
  models = {"float32": model, "bfloat16": jvae.mixed_precision(model, dtype="bfloat16")}
  if args.highest_side or (args.highest_side is None and info["jax_backend"] != "cpu"):
    models["float32_highest"] = model
  init_key, train_key, eval_key = jax.random.split(jax.random.key(args.seed), 3)
  params = model.init(init_key, data[:2])

  def precision(name):
    """Where the side is traced: float32_highest under the "highest" matmul precision."""
    return h.highest_matmuls() if name == "float32_highest" else contextlib.nullcontext()

  trainers, runs, compile_s, compiled_at = {}, {}, {}, {}
  for name, m in models.items():
    tr = jvae.trainer(jvae.elbo(m), optax.adam(LEARNING_RATE), batch_size=BATCH_SIZE)
    state = jax.tree_util.tree_map(jnp.copy, tr.init(params, train_key))  # each side donates
    with precision(name):
      fn, compile_s[name] = h.compile_ahead(tr.epoch, state, data, donate=True)
      compiled_at[name] = jax.config.jax_default_matmul_precision  # None: the backend's default
    trainers[name], runs[name] = tr, h.Carry(fn, state, data)
  rounds = h.alternate(runs, rounds=args.rounds, warmup=args.warmup)
  rate = {name: args.steps / rounds.median(name) for name in runs}
  h.log("training steps/s: " + ", ".join(f"{n} {r:.1f}" for n, r in rate.items()))
  trained = {name: runs[name].state.params for name in runs}

  def estimator(m):
    bound = jvae.log_marginal(m, num_samples=args.eval_samples, chunk_size=40,
                              return_stderr=True)
    return jax.jit(lambda p, k, x: jvae.evaluate_pointwise(bound, p, k, x, batch_size=100))

  evals = {name: estimator(m) for name, m in models.items()}

  def evaluate(name, p):
    with precision(name):  # jit's cache keys on the precision: each side its own program
      return evals[name](p, eval_key, test_x)

  eval_runs = {name: (lambda n=name: evaluate(n, trained["float32"])) for name in evals}
  ev = h.alternate(eval_runs, rounds=args.rounds, warmup=1)
  eval_s = {name: ev.median(name) for name in eval_runs}
  f32, b16 = ev.last["float32"], ev.last["bfloat16"]
  delta = np.asarray(b16["values"], np.float64) - np.asarray(f32["values"], np.float64)
  se = np.asarray(f32["stderrs"], np.float64)
  bf16_trained = evaluate("float32", trained["bfloat16"])
  h.log(f"eval seconds: {eval_s}; evaluation effect mean {delta.mean():+.4f} nats "
        f"(|Δ| {np.abs(delta).mean():.4f}); training effect "
        f"{float(bf16_trained['mean']) - float(f32['mean']):+.3f} nats")

  rec = h.record("precision", {
      "steps_per_epoch": args.steps, "batch_size": BATCH_SIZE, "rounds": args.rounds,
      "warmup_epochs": args.warmup, "data": data_name,
      "train_steps_per_s": rate, "train_speedup": rate["bfloat16"] / rate["float32"],
      "compile_s": compile_s, "matmul_precision": compiled_at, "train_wall_s": rounds.wall,
      "train_bound_last_epoch": {n: float(runs[n].out["bound"]) for n in runs},
      "eval_samples": args.eval_samples, "eval_images": int(test_x.shape[0]),
      "eval_seconds": eval_s, "eval_speedup": eval_s["float32"] / eval_s["bfloat16"],
      "eval_effect_mean": float(delta.mean()), "eval_effect_mean_abs": float(np.abs(delta).mean()),
      "eval_effect_max_abs": float(np.abs(delta).max()),
      "eval_effect_in_stderrs": float(np.mean(delta / se)),
      "mc_stderr_mean": float(se.mean()),
      "test_log_marginal": {"float32_trained": float(f32["mean"]),
                            "bfloat16_trained": float(bf16_trained["mean"])},
      "train_effect": float(bf16_trained["mean"]) - float(f32["mean"]),
      **(tf32_effects(ev, evaluate, trained["float32_highest"])
         if "float32_highest" in models else {}),
  }, packages=("flax", "optax"))
  h.emit(rec, args.out)
  return 0


def tf32_effects(ev, evaluate, highest_params) -> dict:
  """The backend's default float32 matmuls against "highest": the evaluation effect (the
  float32-trained parameters, same samples, default − highest per image) and the training effect
  (the parameters trained at each precision, both evaluated at "highest"; the float32-trained
  ones' is ``ev``'s float32_highest side already)."""
  default, highest = ev.last["float32"], ev.last["float32_highest"]
  delta = np.asarray(default["values"], np.float64) - np.asarray(highest["values"], np.float64)
  default_trained = highest
  highest_trained = evaluate("float32_highest", highest_params)
  h.log(f"float32 default − highest: evaluation {delta.mean():+.4f} nats (|Δ| "
        f"{np.abs(delta).mean():.4f}); training "
        f"{float(default_trained['mean']) - float(highest_trained['mean']):+.3f} nats")
  return {"tf32_eval_effect_mean": float(delta.mean()),
          "tf32_eval_effect_mean_abs": float(np.abs(delta).mean()),
          "tf32_eval_effect_max_abs": float(np.abs(delta).max()),
          "tf32_train_effect": float(default_trained["mean"]) - float(highest_trained["mean"])}


if __name__ == "__main__":
  sys.exit(main())
