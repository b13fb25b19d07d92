"""The amortization gap of the Burda et al. (2015) one-layer VAE on MNIST (Cremer et al. 2018).

Trains ``jvae.burda2015`` (784-200-200-50 tanh, factorized Gaussian encoder, Bernoulli decoder)
with the ELBO (analytic KL, Adam 1e-3, batch 100) inside the script, then on test images reports
the columns of Cremer, Li & Duvenaud (2018), "Inference Suboptimality in Variational
Autoencoders", Tables 2-3, with ``jvae.inference.amortization_gap``:

* log p̂(x): IWAE with K = 5000 (``jvae.log_marginal``), and AIS (``jvae.inference.ais``, started
  from the encoder, HMC transitions);
* L[q*]: the ELBO of a locally optimised factorized Gaussian (the encoder's family) and of a
  full-covariance one (the flexible family, in place of their flow), each started at the encoder's
  q(z|x) and optimised per image with Adam (cosine-decayed step size, STL gradients);
* L[q]: the encoder's ELBO;
* approximation gap log p̂ − L[q*], amortization gap L[q*] − L[q] and inference gap log p̂ − L[q],
  mean ± standard error over the test images (the gaps' errors paired per image).

Every ELBO is estimated with ``--eval-samples`` fresh samples. The budget (epochs, training
images, test images, local steps) is in the record; the gaps depend on it, so compare like with
like. ``--quick`` (≲ 3 minutes on a 2-core CPU): 5 epochs on 10,000 training images, 50 test
images, 300 local steps, AIS with 50 steps and 4 chains; the default: 20 epochs on all 50,000,
500 test images, 1000 local steps, AIS with 500 steps and 16 chains.

    python -m benchmarks.gap --quick --out benchmarks/results/gap.json
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
from jvae.inference import ais_log_marginal
from jvae.inference.gap import amortization_gap, format_table, with_log_marginal
from jvae.training.evaluation import evaluate_pointwise

QUICK = dict(epochs=10, train_images=50000, test_points=50, local_steps=300, local_samples=8,
             ais_steps=100, ais_chains=4, iwae_samples=5000, eval_samples=1000)
FULL = dict(epochs=100, train_images=50000, test_points=1000, local_steps=1000, local_samples=8,
            ais_steps=1000, ais_chains=16, iwae_samples=5000, eval_samples=1000)


def train(train_x, *, epochs, seed, lr):
  """Burda et al.'s one-layer model trained with the ELBO; returns (model, params, record)."""
  model = jvae.burda2015()
  tr = jvae.trainer(jvae.elbo(model), optax.adam(lr), batch_size=100)
  state = tr.init(model.init(jax.random.key(seed), train_x[:2]), jax.random.key(seed + 1))
  epoch = jax.jit(tr.epoch)
  history = []
  start = time.perf_counter()
  for e in range(epochs):
    state, metrics = epoch(state, train_x)
    history.append(float(metrics["bound"]))
    log(f"epoch {e + 1}/{epochs}: train ELBO {history[-1]:.2f} "
        f"({time.perf_counter() - start:.0f}s)")
  return model, state.params, {"train_elbo": history, "train_seconds": time.perf_counter() - start}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="the small budget (≲ 3 minutes on a CPU)")
  for name, default in FULL.items():
    p.add_argument(f"--{name.replace('_', '-')}", type=int, default=None,
                   help=f"default {default} ({QUICK[name]} with --quick)")
  p.add_argument("--learning-rate", type=float, default=1e-3, help="training step size")
  p.add_argument("--local-lr", type=float, default=1e-2,
                 help="initial step size of the local optimisation (cosine-decayed)")
  p.add_argument("--no-ais", action="store_true", help="skip AIS")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  budget = {name: getattr(args, name) if getattr(args, name) is not None
            else (QUICK if args.quick else FULL)[name] for name in FULL}

  train_x, _, test_x, source = load_mnist_or_random()
  rng = np.random.default_rng(args.seed)
  train_x = jnp.asarray(train_x[rng.permutation(len(train_x))[:budget["train_images"]]])
  test_x = test_x[rng.permutation(len(test_x))[:budget["test_points"]]]
  log(f"data: {source}; training on {len(train_x)} images for {budget['epochs']} epochs; "
      f"gaps on {len(test_x)} test images")
  model, params, training = train(train_x, epochs=budget["epochs"], seed=args.seed,
                                  lr=args.learning_rate)

  common = dict(local_steps=budget["local_steps"], local_samples=budget["local_samples"],
                learning_rate=args.local_lr,
                eval_samples=budget["eval_samples"], batch_size=min(100, len(test_x)))
  key = jax.random.key(args.seed + 2)
  start = time.perf_counter()
  iwae = amortization_gap(model, params, key, test_x, log_marginal="iwae",
                          num_samples=budget["iwae_samples"], **common)
  iwae_s = time.perf_counter() - start
  log(format_table(iwae))
  log(f"({iwae_s:.0f}s: {', '.join(f'{k} {v:.0f}s' for k, v in iwae['seconds'].items())})")
  results = {"iwae": _summary(iwae)}

  if not args.no_ais:
    ais_fn = ais_log_marginal(model, num_steps=budget["ais_steps"],
                              num_chains=budget["ais_chains"], init="posterior",
                              return_stderr=True)
    method = f"ais ({budget['ais_steps']} steps, {budget['ais_chains']} chains, from q(z|x))"
    start = time.perf_counter()
    out = jax.jit(lambda p, k, x: evaluate_pointwise(ais_fn, p, k, x, batch_size=100))(
        params, jax.random.key(args.seed + 3), jnp.asarray(test_x))
    ais_s = time.perf_counter() - start
    # The same local optima and L[q]; only log p̂(x) (and so the gaps) change.
    ais = with_log_marginal(iwae, np.asarray(out["values"]), method=method,
                            mc_stderr=np.asarray(out["stderrs"]))
    log(format_table(ais))
    log(f"(AIS {ais_s:.0f}s)")
    results["ais"] = {**_summary(ais), "seconds": {"log_marginal": ais_s}}

  emit(record("gap", {"data": source, "model": "burda2015", "encoder": iwae["encoder"],
        "training": {"objective": "elbo (analytic KL)", "optimizer": f"adam({args.learning_rate})",
                     "batch_size": 100, "epochs": budget["epochs"],
                     "images": len(train_x), **training},
        "budget": budget, "quick": args.quick, "test_points": len(test_x),
        "local": {"optimizer": f"adam, cosine decay from {args.local_lr}", "init": "amortized",
                  "estimator": "stl", "steps": budget["local_steps"],
                  "samples_per_step": budget["local_samples"]},
        "iwae_seconds": iwae_s, "results": results}), args.out)


def _summary(result):
  """The record's part of an amortization_gap result: means, errors, method, curve, timings."""
  return {"log_marginal": result["log_marginal_method"], "mean": result["mean"],
          "stderr": result["stderr"], "log_marginal_mc_stderr": result["log_marginal_mc_stderr"],
          "trace": result["trace"], "seconds": result["seconds"]}


if __name__ == "__main__":
  main()
