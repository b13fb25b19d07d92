"""AIS against IWAE for log p(x) at matched compute, on the exact oracle and a small trained VAE.

Annealed importance sampling with HMC transitions (``jvae.inference.ais_log_marginal``, Wu et
al. 2017, "On the quantitative analysis of decoder-based generative models") against the
importance-sampled estimate with the encoder as proposal (``jvae.log_marginal``, = IWAE_K,
Burda et al. 2015). Both are stochastic lower bounds on log p(x).

Compute is matched per data point by the number of ``log_joint`` evaluations: AIS with C chains,
T steps and L leapfrog steps costs G = C·(T − 1)·(L + 1) gradient evaluations (plus C·(T + 1)
values); IWAE gets K = G samples, each one evaluation *without* a gradient (a gradient costs
about 2–3 evaluations on a CPU), so at equal G IWAE does less work: the wall-clock columns
(compiled, compile time excluded) show the difference.

1. Oracle: the linear-Gaussian VAE (D = 20, d = 5) whose log p(x) is exact, on data simulated
   from the model, with two encoders: a full-covariance q set to p(z|x) and then perturbed (mean
   shifted by 0.3, scales widened by 1.5: a good but imperfect q) and the random initial one (a
   poor q). Reported: mean error of each estimator against the exact value, mean |error|, mean
   standard error, wall time.
2. A small VAE (784-200-10, tanh, Bernoulli) trained on binarized MNIST (``$JVAE_DATA_DIR``; a
   random stand-in of the same shape when absent) for a stated budget; no exact value, so the
   estimates are compared with each other (higher is tighter: all are lower bounds in
   expectation) and BDMC (Grosse et al. 2015) on data simulated from the trained model gives the
   sandwich width at the largest AIS budget.

``--quick`` (≲ 2 minutes on a 2-core CPU): 2 budgets, 16 test images, 5 training epochs on 10k
images; the full run: 3 budgets, 100 test images, 20 epochs on the 50k training images.

    python -m benchmarks.ais --quick --out benchmarks/results/ais.json
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jvae
from benchmarks._harness import compile_ahead, emit, load_mnist_or_random, log, record, timed
from jvae import oracles
from jvae.inference import ais_log_marginal, bdmc

LEAPFROG = 5


def budget(num_chains: int, num_steps: int) -> int:
  """Gradient evaluations of log_joint per data point of one AIS run."""
  return num_chains * (num_steps - 1) * (LEAPFROG + 1)


def compare(model, cases, key, *, steps, num_chains, step_size):
  """IWAE and AIS (both inits) at each budget on each case ``(label, params, x, exact)`` (one
  compiled program per estimator and budget, shared by the cases); one row per combination."""
  rows = []
  for t in steps:
    g = budget(num_chains, t)
    estimators = {
        "iwae": jvae.log_marginal(model, num_samples=g, chunk_size=min(g, 1024),
                                  return_stderr=True),
        "ais_prior": ais_log_marginal(model, num_steps=t, num_chains=num_chains,
                                      num_leapfrog=LEAPFROG, step_size=step_size,
                                      init="prior", return_stderr=True),
        "ais_posterior": ais_log_marginal(model, num_steps=t, num_chains=num_chains,
                                          num_leapfrog=LEAPFROG, step_size=step_size,
                                          init="posterior", return_stderr=True),
    }
    for name, f in estimators.items():
      _, params, x, _ = cases[0]
      program, compile_s = compile_ahead(f, params, key, x)
      for label, params, x, exact in cases:
        (value, stderr), run_s, _ = timed(program, params, key, x)
        row = {"case": label, "method": name, "budget_gradients": g, "wall_s": run_s,
               "compile_s": compile_s, "mean_estimate": float(value.mean()),
               "mean_stderr": float(stderr.mean())}
        if name == "iwae":
          row["num_samples"] = g
        else:
          row.update(num_chains=num_chains, num_steps=t, num_leapfrog=LEAPFROG)
        if exact is not None:
          err = np.asarray(value - exact)
          row.update(mean_error=float(err.mean()), mean_abs_error=float(np.abs(err).mean()))
        rows.append(row)
        extra = (f"error {row['mean_error']:+.3f} (|.| {row['mean_abs_error']:.3f})"
                 if exact is not None else f"estimate {row['mean_estimate']:.3f}")
        log(f"  {label:9s} {name:13s} G={g:6d}  {extra}  se {row['mean_stderr']:.3f}  "
            f"{run_s:.2f}s (+{compile_s:.1f}s compile)")
  return rows


def near_posterior(model, params, *, shift: float, widen: float):
  exact = oracles.exact_posterior_params(model, params)
  enc = dict(exact["params"]["encoder"])
  enc["c"] = enc["c"] + shift
  enc["log_scale"] = enc["log_scale"] + jnp.log(widen)
  return {"params": {**exact["params"], "encoder": enc}}


def oracle_part(args, steps):
  log("oracle: linear-Gaussian VAE, D=20, d=5; q = perturbed p(z|x) ('good') or the random "
      "initial encoder ('poor')")
  model = oracles.linear_gaussian_vae(20, 5, full_cov=True)
  poor = model.init(jax.random.key(args.seed), jnp.zeros((1, 20)))
  good = near_posterior(model, poor, shift=0.3, widen=1.5)
  _, x = model.sample_joint(good, jax.random.key(args.seed + 1), args.points)
  exact = oracles.exact_log_marginal(model, good, x)
  cases = [("good q", good, x, exact), ("poor q", poor, x, exact)]
  rows = compare(model, cases, jax.random.key(args.seed + 2), steps=steps,
                 num_chains=args.chains, step_size=0.1)
  return {"data_dim": 20, "latent_dim": 5, "points": args.points,
          "cases": {"good q": "p(z|x) with mean +0.3 and scales x1.5",
                    "poor q": "the random initial encoder (same generative model)"},
          "mean_exact_log_p": float(exact.mean()), "rows": rows}


def vae_part(args, steps):
  train, _, test, source = load_mnist_or_random()
  train = jnp.asarray(train[:args.train_images])
  test = jnp.asarray(test[np.random.default_rng(args.seed).permutation(len(test))[:args.points]])
  model = jvae.mlp_vae(latent_dim=10, hidden=(200,))
  trainer = jvae.trainer(jvae.elbo(model), optax.adam(1e-3), batch_size=100)
  state = trainer.init(model.init(jax.random.key(args.seed), train[:2]),
                       jax.random.key(args.seed + 1))
  epoch = jax.jit(trainer.epoch)
  start = time.perf_counter()
  for _ in range(args.epochs):
    state, metrics = epoch(state, train)
  train_s = time.perf_counter() - start
  test_elbo = float(jvae.elbo(model)(state.params, jax.random.key(0), test).mean())
  log(f"vae: 784-200-10 on {source}, {args.epochs} epochs x {len(train)} images in "
      f"{train_s:.0f}s; train ELBO {float(metrics['bound']):.2f}, test ELBO {test_elbo:.2f}")
  rows = compare(model, [("mnist test", state.params, test, None)],
                 jax.random.key(args.seed + 2), steps=steps, num_chains=args.chains,
                 step_size=0.05)
  sandwich = bdmc(model, num_steps=steps[-1], num_chains=args.chains, num_leapfrog=LEAPFROG,
                  step_size=0.05)
  fn = lambda p, k: sandwich(p, k, args.points)
  program, compile_s = compile_ahead(fn, state.params, jax.random.key(args.seed + 3))
  out, run_s, _ = timed(program, state.params, jax.random.key(args.seed + 3))
  width = np.asarray(out["upper"] - out["lower"])
  bdmc_row = {"num_steps": steps[-1], "num_chains": args.chains, "points": args.points,
              "mean_lower": float(out["lower"].mean()), "mean_upper": float(out["upper"].mean()),
              "mean_width": float(width.mean()), "max_width": float(width.max()),
              "wall_s": run_s, "compile_s": compile_s}
  log(f"  bdmc T={steps[-1]} C={args.chains} on simulated data: lower "
      f"{bdmc_row['mean_lower']:.2f}, upper {bdmc_row['mean_upper']:.2f}, mean width "
      f"{bdmc_row['mean_width']:.3f} ({run_s:.1f}s)")
  return {"data": source, "architecture": "784-200-10 tanh, Bernoulli", "epochs": args.epochs,
          "train_images": len(train), "train_seconds": train_s, "test_elbo": test_elbo,
          "points": args.points, "rows": rows, "bdmc": bdmc_row}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true")
  p.add_argument("--steps", type=int, nargs="+", default=None,
                 help="AIS steps T per budget (default: 20 200 2000; quick: 20 200)")
  p.add_argument("--chains", type=int, default=None, help="AIS chains C (default 16; quick 8)")
  p.add_argument("--points", type=int, default=None, help="data points (default 100; quick 16)")
  p.add_argument("--epochs", type=int, default=None, help="VAE epochs (default 20; quick 5)")
  p.add_argument("--train-images", type=int, default=None, help="default 50000; quick 10000")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  quick = {"steps": [20, 200], "chains": 8, "points": 16, "epochs": 5, "train_images": 10000}
  full = {"steps": [20, 200, 2000], "chains": 16, "points": 100, "epochs": 20,
          "train_images": 50000}
  for name, value in (quick if args.quick else full).items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  start = time.perf_counter()
  steps = sorted(args.steps)
  fields = {"quick": args.quick, "num_leapfrog": LEAPFROG,
            "chains": args.chains, "steps": steps,
            "budgets_gradients": [budget(args.chains, t) for t in steps],
            "oracle": oracle_part(args, steps), "vae": vae_part(args, steps)}
  fields["seconds"] = time.perf_counter() - start
  log(f"total {fields['seconds']:.0f}s")
  emit(record("ais", fields), args.out)


if __name__ == "__main__":
  main()
