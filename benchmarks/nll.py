"""Test NLL of the Burda et al. (2015) one- and two-layer models and a ladder VAE on MNIST.

Trains each experiment for the same epoch budget (Adam 1e-3, batch 100) with the library's own
training loop, then estimates the test log-likelihood with ``jvae.log_marginal`` (K = 5000 by
default) and its Monte-Carlo standard error. Prints a table to stderr and one JSON line.

Experiments (``--experiments``):
  vae1       ELBO, K=1 (analytic KL)                 — Burda et al. "VAE k=1"
  iwae5      IWAE, K=5                               — Burda et al. "IWAE k=5"
  iwae50     IWAE, K=50, standard gradient           — Burda et al. "IWAE k=50"
  iwae50dreg IWAE, K=50, DReG (Tucker et al. 2018)
  vae1iaf    ELBO, K=1 (sampled KL), IAF posterior with 2 steps (Kingma et al. 2016)
  vae1_2l    two stochastic layers (``burda2015_2layer``), ELBO with sampled KL
  iwae5_2l   two layers, IWAE K=5
  iwae50_2l  two layers, IWAE K=50
  lvae1      ladder VAE (``lvae``, Sønderby et al. 2016), ELBO with sampled KL

Every row here trains and tests on the statically binarized MNIST (the shipped data). Published
numbers beside them, with the binarization they were measured on (3,280 passes):
  * one layer, static binarization (Burda et al.'s appendix): 88.71 / 87.63 / 87.10 nats for
    IWAE k = 1 / 5 / 50;
  * two layers, dynamic binarization (Burda et al. Table 1, IWAE column): 85.33 / 83.89 / 82.90
    for k = 1 / 5 / 50 — not the same data, so a reference, not a target.

    python -m benchmarks.nll --epochs 20 --experiments vae1 iwae5 iwae50
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jvae
from benchmarks._harness import emit, load_mnist_or_random, log, record
from jvae.training.evaluation import evaluate_pointwise

EXPERIMENTS = {
    "vae1": dict(bound="elbo", k=1),
    "iwae5": dict(bound="iwae", k=5),
    "iwae50": dict(bound="iwae", k=50),
    "iwae50dreg": dict(bound="iwae", k=50, estimator="dreg"),
    "vae1iaf": dict(bound="elbo", k=1, posterior="iaf"),
    "vae1_2l": dict(bound="elbo", k=1, model="burda2015_2layer"),
    "iwae5_2l": dict(bound="iwae", k=5, model="burda2015_2layer"),
    "iwae50_2l": dict(bound="iwae", k=50, model="burda2015_2layer"),
    "lvae1": dict(bound="elbo", k=1, model="lvae"),
}
# (nats, binarization of the published figure); Burda et al. 2015.
PAPER = {"vae1": (88.71, "static"), "iwae5": (87.63, "static"), "iwae50": (87.10, "static"),
         "vae1_2l": (85.33, "dynamic"), "iwae5_2l": (83.89, "dynamic"),
         "iwae50_2l": (82.90, "dynamic")}


def build(spec):
  name = spec.get("model", "burda2015")
  if name == "burda2015":
    model = jvae.burda2015(posterior=spec.get("posterior", "gaussian"), iaf_steps=2,
                           iaf_hidden=(200, 200))
  else:
    model = jvae.PRESETS[name]()
  est = spec.get("estimator", "reparam")
  if spec["bound"] == "elbo":
    kl = "analytic" if name == "burda2015" and spec.get("posterior") != "iaf" else "sample"
    return model, jvae.elbo(model, num_samples=spec["k"], kl=kl)
  return model, jvae.iwae(model, num_samples=spec["k"], estimator=est)


def evaluate_nll(model, params, test, *, num_samples, rows=16384, seed=0):
  """Mean test log p(x) and its MC standard error, memory bounded by ``rows`` = chunk × batch."""
  batch = min(100, len(test))
  lm = jvae.log_marginal(model, num_samples=num_samples,
                         chunk_size=max(1, min(num_samples, rows // batch)), return_stderr=True)
  out = jax.jit(lambda p, k, x: evaluate_pointwise(lm, p, k, x, batch_size=batch))(
      params, jax.random.key(seed), test)
  return float(out["mean"]), float(out["mc_stderr"])


def run(name, spec, data, args):
  train, valid, test = (jnp.asarray(a) for a in data)
  model, objective = build(spec)
  tr = jvae.trainer(objective, optax.adam(args.lr), batch_size=100)
  state = jvae.fit_init(model, tr, jvae.seed_keys(args.seed, 1), train[:2])
  start = time.perf_counter()
  state, _ = jvae.fit(tr, state, train, valid, epochs=args.epochs,
                         valid_bound=jvae.elbo(model, kl="sample"),
                         callback=lambda s, r: log(f"{name}: epoch {r['epoch']} "
                                                   f"train {float(r['train_bound'][0]):.2f} "
                                                   f"valid {float(r['valid_bound'][0]):.2f} "
                                                   f"({r['seconds']:.1f}s)"))
  train_s = time.perf_counter() - start
  params = jax.tree_util.tree_map(lambda a: a[0], state.best_params)
  test_x = test if args.test_limit is None else test[np.random.default_rng(0).permutation(
      len(test))[:args.test_limit]]
  start = time.perf_counter()
  ll, se = evaluate_nll(model, params, test_x, num_samples=args.eval_samples)
  eval_s = time.perf_counter() - start
  log(f"{name}: test NLL {-ll:.2f} ± {se:.2f} nats (K={args.eval_samples}, "
      f"{len(test_x)} images; train {train_s:.0f}s, eval {eval_s:.0f}s)")
  return {"experiment": name, **spec, "test_nll": -ll, "stderr": se, "epochs": args.epochs,
          "best_epoch": int(state.best_epoch[0]), "train_seconds": train_s,
          "eval_seconds": eval_s, "test_images": len(test_x), "binarization": "static",
          "paper_nll": PAPER.get(name, (None, None))[0],
          "paper_binarization": PAPER.get(name, (None, None))[1]}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--experiments", nargs="+", choices=sorted(EXPERIMENTS),
                 default=["vae1", "iwae5", "iwae50"])
  p.add_argument("--epochs", type=int, default=10, help="passes over the 50k training images")
  p.add_argument("--eval-samples", type=int, default=5000)
  p.add_argument("--test-limit", type=int, default=None,
                 help="evaluate on this many random test images (default: all 10,000)")
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  *data, source = load_mnist_or_random()
  rows = [run(name, EXPERIMENTS[name], data, args) for name in args.experiments]
  log("\n| experiment | epochs | test NLL (nats) | ± s.e. | Burda et al. |")
  for r in rows:
    paper = f"{r['paper_nll']:.2f} ({r['paper_binarization']})" if r["paper_nll"] else "—"
    log(f"| {r['experiment']} | {r['epochs']} | {r['test_nll']:.2f} | {r['stderr']:.2f} | "
        f"{paper} |")
  emit(record("nll", {"data": source, "eval_samples": args.eval_samples, "results": rows}),
       args.out)


if __name__ == "__main__":
  main()
