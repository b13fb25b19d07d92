"""Gradient estimators for discrete latents: variance against K, and SBNs trained with each.

Part 1, the exact oracle (``jvae.discrete_oracle.EnumerableBernoulli``, 8 binary latents, 12
pixels, 4 data points): for each estimator and K, the total variance of the encoder gradient over
``--keys`` independent draws, and, for the K = 1 (ELBO) estimators, the relative bias
|E g − ∇ELBO| / |∇ELBO| against the exact gradient by enumeration (score-function estimators are
unbiased, so theirs is Monte-Carlo noise; the Concrete and straight-through ones are biased).
Estimators: REINFORCE (``score``), with a moving-average baseline at the mean signal (``ema``),
NVIL with a learned baseline trained first (``nvil``; its variance is reported after undoing the
1/max(1, √v) rescaling), IWAE_K with the score gradient (``iwae_score``) and VIMCO, and the
Concrete relaxation (τ = 0.5, reparameterized) and its straight-through variant.

Part 2, a sigmoid belief network (one layer of 200 binary units, linear conditionals, as in
Mnih & Gregor 2014 and Mnih & Rezende 2016) on binarized MNIST, each trained for the same budget
(``--epochs`` over ``--train-size`` images, Adam at ``--lr``, ``--batch-size``) with NVIL (ELBO,
K = 1), REINFORCE with a moving average, and VIMCO (K = 5); test NLL by ``jvae.log_marginal``
(K = ``--test-samples``) on ``--test-images`` images. The published SBN numbers of those
papers come from training runs orders of magnitude longer than this budget, so the protocol does
not match: they are not a target and are not shown.

    python -m benchmarks.discrete --out benchmarks/results/discrete.json \\
        --plot benchmarks/results/discrete.png
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax

import jvae
from benchmarks._harness import emit, load_mnist_or_random, log, record
from jvae.bounds.control_variates import MovingAverage
from jvae.models import discrete_oracle as do

ORACLE = dict(num_latents=8, num_pixels=12)


def _grads(f, params, x, keys, state=None):
  def one(key):
    if state is None:
      return jax.grad(lambda p: f(p, key, x).mean())(params)
    return jax.grad(lambda p: f.with_state(p, key, x, state)[0].mean())(params)
  return jax.jit(jax.vmap(one))(keys)


def _encoder(g):
  return jnp.concatenate([g["A"].reshape(g["A"].shape[0], -1), g["c"]], axis=1)


def _train_nvil_baseline(f, params_model, psi, x, steps=300):
  opt = optax.adam(3e-2)

  @jax.jit
  def step(psi, opt_state, state, key):
    def loss(psi):
      values, new = f.with_state({"model": params_model, "baseline": psi}, key, x, state)
      return -values.mean(), new
    (_, state), g = jax.value_and_grad(loss, has_aux=True)(psi)
    updates, opt_state = opt.update(g, opt_state)
    return optax.apply_updates(psi, updates), opt_state, state

  state, opt_state = f.init_state(), opt.init(psi)
  for i in range(steps):
    psi, opt_state, state = step(psi, opt_state, state, jax.random.key(1000 + i))
  return psi, state


def oracle_rows(ks, num_keys: int, seed: int = 0):
  model = do.EnumerableBernoulli(**ORACLE)
  params = model.init(jax.random.key(seed), None)
  x = (jax.random.uniform(jax.random.key(seed + 1), (4, ORACLE["num_pixels"])) < 0.5)
  x = x.astype(jnp.float32)
  keys = jax.random.split(jax.random.key(seed + 2), num_keys)
  exact = _encoder(jax.tree_util.tree_map(
      lambda a: a[None], jax.grad(lambda p: do.exact_elbo(model, p, x).mean())(params)))[0]
  mean_signal = jnp.mean(do.exact_elbo(model, params, x))
  at_mean = MovingAverage(mean_signal, jnp.float32(1.0), jnp.int32(1))
  rows = []

  def record(name, k, grads, scale=1.0):
    enc = _encoder(grads) * scale
    row = {"estimator": name, "k": k, "encoder_variance": float(jnp.sum(enc.var(0)))}
    if k == 1:
      row["relative_bias"] = float(jnp.linalg.norm(enc.mean(0) - exact) / jnp.linalg.norm(exact))
    rows.append(row)
    log(f"oracle {name:16s} K={k:3d} encoder variance {row['encoder_variance']:10.4f}"
        + (f"  relative bias {row['relative_bias']:.3f}" if "relative_bias" in row else ""))

  wrapped = jvae.with_baseline(model, hidden=(16,))
  for k in ks:
    if k == 1:
      record("score", 1, _grads(jvae.elbo(model, kl="sample", estimator="score"), params, x,
                                keys))
      ema = jvae.elbo(model, kl="sample", estimator="score", baseline="ema")
      record("ema", 1, _grads(ema, params, x, keys, at_mean))
      nvil = jvae.elbo(wrapped, kl="sample", estimator="score", baseline="nvil")
      psi, state = _train_nvil_baseline(nvil, params, wrapped.init(jax.random.key(3), x)[
          "baseline"], x)
      g = _grads(nvil, {"model": params, "baseline": psi}, x, keys, state)["model"]
      record("nvil", 1, g, scale=max(1.0, float(jnp.sqrt(state.var))))
      for relax in ("concrete", "straight_through"):
        relaxed = do.EnumerableBernoulli(**ORACLE, relaxation=relax, temperature=0.5,
                                         discrete_kl=True)
        record(relax, 1, _grads(jvae.elbo(relaxed, kl="analytic"), params, x, keys))
    else:
      record("iwae_score", k, _grads(jvae.iwae(model, num_samples=k, estimator="score"), params,
                                     x, keys))
      record("vimco", k, _grads(jvae.iwae(model, num_samples=k, estimator="vimco"), params, x,
                                keys))
      for relax in ("concrete", "straight_through"):
        relaxed = do.EnumerableBernoulli(**ORACLE, relaxation=relax, temperature=0.5,
                                         discrete_kl=True)
        record(relax, k, _grads(jvae.iwae(relaxed, num_samples=k), params, x, keys))
  return rows


SBN_RUNS = {
    "nvil": dict(bound="elbo", k=1, estimator="score", baseline="nvil"),
    "reinforce_ema": dict(bound="elbo", k=1, estimator="score", baseline="ema"),
    "vimco5": dict(bound="iwae", k=5, estimator="vimco", baseline=None),
}


def sbn_rows(names, *, epochs: int, batch_size: int, lr: float, test_images: int,
             test_samples: int, train_size: int | None, seed: int = 0):
  train, _, test, data_name = load_mnist_or_random()
  if train_size:
    train = train[:train_size]
  test = jnp.asarray(test[:test_images])
  x_train = jnp.asarray(train)
  rows = []
  for name in names:
    spec = SBN_RUNS[name]
    model = jvae.SigmoidBeliefNet(event_shape=(784,), layers=(200,))
    if spec.get("baseline") == "nvil":
      model = jvae.with_baseline(model, hidden=(100,))
    if spec["bound"] == "elbo":
      f = jvae.elbo(model, kl="sample", estimator=spec["estimator"],
                    baseline=spec.get("baseline"))
    else:
      f = jvae.iwae(model, num_samples=spec["k"], estimator=spec["estimator"])
    tr = jvae.trainer(f, optax.adam(lr), batch_size=batch_size)
    params = model.init(jax.random.key(seed), x_train[:2])
    state = tr.init(params, jax.random.key(seed + 1))
    epoch = jax.jit(tr.epoch)
    start = time.perf_counter()
    bounds = []
    for e in range(epochs):
      state, m = epoch(state, x_train)
      bounds.append(float(m["bound"]))
      log(f"sbn {name:14s} epoch {e + 1}: train objective {bounds[-1]:.2f} "
          f"({time.perf_counter() - start:.0f} s)")
    train_s = time.perf_counter() - start
    lm = jvae.log_marginal(model, num_samples=test_samples, chunk_size=min(500, test_samples),
                           return_stderr=True)
    value, se = jvae.evaluate(jax.jit(lm), state.params, jax.random.key(seed + 2), test,
                              batch_size=100)
    rows.append({"run": name, **spec, "epochs": epochs, "train_objective": bounds,
                 "test_nll": -float(value), "mc_stderr": float(se), "train_seconds": train_s,
                 "steps": int(state.step), "data": data_name})
    log(f"sbn {name}: test NLL {-float(value):.2f} ± {float(se):.2f} "
        f"(K={test_samples}, {test_images} images), {train_s:.0f} s")
  return rows


def plot(rows, path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 3.8))
  names = []
  for r in rows:
    if r["estimator"] not in names:
      names.append(r["estimator"])
  for name in names:
    r = sorted((row for row in rows if row["estimator"] == name), key=lambda row: row["k"])
    style = "o-" if len(r) > 1 else "s"
    ax.loglog([row["k"] for row in r], [row["encoder_variance"] for row in r], style,
              label=name)
  ax.set_xlabel("K (samples)")
  ax.set_ylabel("encoder-gradient variance")
  ax.set_title("Discrete-latent gradient estimators (exact oracle)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 5, 10, 50])
  p.add_argument("--keys", type=int, default=2000)
  p.add_argument("--runs", nargs="*", default=list(SBN_RUNS), choices=list(SBN_RUNS))
  p.add_argument("--epochs", type=int, default=5)
  p.add_argument("--batch-size", type=int, default=24)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--train-size", type=int, default=None, help="first N training images")
  p.add_argument("--test-images", type=int, default=10000)
  p.add_argument("--test-samples", type=int, default=5000)
  p.add_argument("--quick", action="store_true")
  p.add_argument("--out", default=None)
  p.add_argument("--plot", default="benchmarks/results/discrete.png")
  args = p.parse_args(argv)
  if args.quick:
    args.ks, args.keys, args.epochs = [1, 2, 5, 20], 500, 1
    args.train_size, args.test_images, args.test_samples = 10000, 500, 1000
  start = time.perf_counter()
  oracle = oracle_rows(args.ks, args.keys)
  sbn = sbn_rows(args.runs, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                 test_images=args.test_images, test_samples=args.test_samples,
                 train_size=args.train_size)
  if args.plot:
    import pathlib

    pathlib.Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    plot(oracle, args.plot)
  emit(record("discrete", {
      "keys": args.keys, "oracle": oracle, "sbn": sbn,
      "sbn_budget": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                     "train_size": args.train_size, "test_images": args.test_images,
                     "test_samples": args.test_samples},
      "wall_seconds": time.perf_counter() - start, "plot": args.plot}), args.out)


if __name__ == "__main__":
  main()
