"""Encoder-gradient signal-to-noise ratio of IWAE gradient estimators against K.

Rainforth et al. (2018) show that the standard IWAE encoder gradient's SNR = |E[g]| / std(g)
falls like O(1/√K); Tucker et al.'s (2018) doubly-reparameterized estimator (DReG) does not.
The effect lives where q is close to the true posterior (the true encoder gradient then
shrinks like 1/K while the noise shrinks like 1/√K), so this script uses the linear-Gaussian oracle
model with q = p(z|x) perturbed (mean shifted by 0.1, scales widened by 1.2), averages the
per-parameter SNR over the encoder (and decoder) parameters, and plots it for reparam, STL and
DReG.

    python -m benchmarks.snr --out benchmarks/results/snr.json --plot benchmarks/results/snr.png
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import jvae
from benchmarks._harness import emit, log, record
from jvae import oracles

ESTIMATORS = ("reparam", "stl", "dreg")


def near_posterior_params(model, params, *, shift: float, widen: float):
  """q = p(z|x) with its mean shifted by ``shift`` and its scales multiplied by ``widen``."""
  exact = oracles.exact_posterior_params(model, params)
  enc = dict(exact["params"]["encoder"])
  enc["c"] = enc["c"] + shift
  enc["log_scale"] = enc["log_scale"] + jnp.log(widen)
  return {"params": {**exact["params"], "encoder": enc}}


def snr_curve(ks, *, num_keys: int, data_dim: int = 10, latent_dim: int = 4, seed: int = 0,
              shift: float = 0.1, widen: float = 1.2):
  model = oracles.linear_gaussian_vae(data_dim, latent_dim, noise_scale=1.0, full_cov=True)
  x = jax.random.normal(jax.random.key(seed + 1), (1, data_dim)) * 2.0
  params = near_posterior_params(model, model.init(jax.random.key(seed), x), shift=shift,
                                 widen=widen)
  keys = jax.random.split(jax.random.key(seed + 2), num_keys)
  rows = []
  for est in ESTIMATORS:
    for k in ks:
      f = jvae.iwae(model, num_samples=k, estimator=est)
      grad = jax.jit(jax.vmap(jax.grad(lambda p, key, f=f: f(p, key, x).sum()),
                              in_axes=(None, 0)))(params, keys)
      enc = jnp.concatenate([g.reshape(num_keys, -1) for g in
                             jax.tree_util.tree_leaves(grad["params"]["encoder"])], axis=1)
      dec = jnp.concatenate([g.reshape(num_keys, -1) for g in
                             jax.tree_util.tree_leaves(grad["params"]["decoder"])], axis=1)
      snr = lambda g: float(jnp.mean(jnp.abs(g.mean(0)) / (g.std(0) + 1e-12)))
      rows.append({"estimator": est, "k": k, "encoder_snr": snr(enc), "decoder_snr": snr(dec)})
      log(f"{est:8s} K={k:3d}  encoder SNR {rows[-1]['encoder_snr']:.3f}  "
          f"decoder SNR {rows[-1]['decoder_snr']:.3f}")
  return rows


def plot(rows, path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
  for est in ESTIMATORS:
    r = [row for row in rows if row["estimator"] == est]
    for ax, key in zip(axes, ("encoder_snr", "decoder_snr"), strict=True):
      ax.loglog([row["k"] for row in r], [row[key] for row in r], "o-", label=est)
  for ax, title in zip(axes, ("encoder (φ)", "decoder (θ)"), strict=True):
    ax.set_xlabel("K (samples)")
    ax.set_ylabel("mean SNR |E g| / sd g")
    ax.set_title(f"IWAE gradient SNR, {title}")
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
  p.add_argument("--keys", type=int, default=2000, help="independent gradient draws per point")
  p.add_argument("--quick", action="store_true")
  p.add_argument("--out", default=None)
  p.add_argument("--plot", default="benchmarks/results/snr.png")
  args = p.parse_args(argv)
  if args.quick:
    args.ks, args.keys = [1, 8, 64], 500
  rows = snr_curve(args.ks, num_keys=args.keys)
  by = {(r["estimator"], r["k"]): r["encoder_snr"] for r in rows}
  kmin, kmax = min(args.ks), max(args.ks)
  if args.plot:
    import pathlib

    pathlib.Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    plot(rows, args.plot)
  emit(record("snr", {"keys": args.keys, "rows": rows,
                      "reparam_encoder_snr_ratio": by[("reparam", kmax)] / by[("reparam", kmin)],
                      "dreg_encoder_snr_ratio": by[("dreg", kmax)] / by[("dreg", kmin)],
                      "plot": args.plot}), args.out)


if __name__ == "__main__":
  main()
