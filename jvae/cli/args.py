"""The ``jvae`` command line: its arguments, parsed into validated values (layer 6)."""

from __future__ import annotations

import argparse
import math
import pathlib

BOUNDS = ("elbo", "iwae", "renyi", "miwae", "ciwae", "piwae")
MODELS = ("mlp", "kingma2014", "burda2015")
POSTERIORS = ("gaussian", "fullcov", "iaf")
ESTIMATORS = ("reparam", "stl", "dreg")
OPTIMIZERS = ("adam", "adamax")
DATASETS = ("digits", "binarized_mnist", "mnist")
DEFAULT_EPOCHS = 100


def _number(kind: type, minimum: float, *, strict: bool = False):
  """An argparse type: a finite ``kind`` ≥ ``minimum`` (> when ``strict``), else a usage error."""
  name = "an integer" if kind is int else "a number"
  bound = f"{'>' if strict else '>='} {minimum:g}"

  def parse(text: str):
    try:
      value = kind(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"not {name}: {text!r}") from None
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
      raise argparse.ArgumentTypeError(f"must be {name} {bound}, got {text}")
    return value

  return parse


_positive_int = _number(int, 1)


def _seed_chunk(text: str):
  """``auto`` or a positive integer (``--seed-chunk``)."""
  return "auto" if text == "auto" else _positive_int(text)

_nonneg_int = _number(int, 0)
_positive_float = _number(float, 0, strict=True)
_nonneg_float = _number(float, 0)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="jvae", description="Train, evaluate and sample variational autoencoders.")
  sub = parser.add_subparsers(dest="command", required=True)

  t = sub.add_parser("train", help="train a VAE (default: a small MLP VAE on digits)")
  t.add_argument("--data", choices=DATASETS, default="digits")
  t.add_argument("--model", choices=MODELS, default="mlp",
                 help="mlp: --hidden/--latent-dim; kingma2014: 784-500-20; burda2015: "
                      "784-200-200-50")
  t.add_argument("--hidden", type=_positive_int, nargs="+", default=None,
                 help="hidden widths of the mlp model (default 128 64)")
  t.add_argument("--latent-dim", type=_positive_int, default=None)
  t.add_argument("--posterior", choices=POSTERIORS, default="gaussian")
  t.add_argument("--iaf-steps", type=_nonneg_int, default=2)
  t.add_argument("--bound", choices=BOUNDS, default="elbo")
  t.add_argument("--num-samples", "-k", type=_positive_int, default=1,
                 help="samples K per data point (per group for miwae/piwae)")
  t.add_argument("--groups", type=_positive_int, default=1, help="M for miwae/piwae")
  t.add_argument("--alpha", type=_nonneg_float, default=0.5, help="order of the Rényi bound")
  t.add_argument("--elbo-weight", type=_nonneg_float, default=0.5, help="β of CIWAE")
  t.add_argument("--kl", choices=("analytic", "sample"), default=None,
                 help="ELBO KL term (default: analytic when it exists, else sample)")
  t.add_argument("--estimator", choices=ESTIMATORS, default="reparam")
  t.add_argument("--warmup-steps", type=_nonneg_int, default=0, help="KL warm-up length")
  t.add_argument("--beta", type=_nonneg_float, default=1.0, help="(final) KL weight β")
  t.add_argument("--free-bits", type=_nonneg_float, default=None, help="λ in nats per group")
  t.add_argument("--free-bits-groups", type=_positive_int, default=None)
  t.add_argument("--epochs", type=_nonneg_int, default=None,
                 help=f"number of epochs (default {DEFAULT_EPOCHS}); with --resume, a new total")
  t.add_argument("--batch-size", type=_positive_int, default=100)
  t.add_argument("--lr", type=_positive_float, default=1e-3)
  t.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
  t.add_argument("--patience", type=_positive_int, default=None,
                 help="early stopping: epochs without validation improvement")
  t.add_argument("--seed", type=_nonneg_int, default=0)
  t.add_argument("--seeds", type=_positive_int, default=1, help="train N seeds in one program")
  t.add_argument("--devices", type=_positive_int, default=None,
                 help="shard over this many devices (see --parallel)")
  t.add_argument("--parallel", choices=("data", "seeds"), default="data")
  t.add_argument("--seed-chunk", type=_seed_chunk, default="auto", metavar="K|auto",
                 help="with --seeds: train K seeds per vmap, lax.map over the chunks (auto: 2 on "
                      "a CPU, all at once on an accelerator or with --parallel seeds); speed only")
  t.add_argument("--eval-samples", type=_positive_int, default=None,
                 help="K of the final test IWAE / log-likelihood estimate (default 100)")
  t.add_argument("--out", type=pathlib.Path, default=None,
                 help="run directory (default runs/<date-time>)")
  t.add_argument("--resume", type=pathlib.Path, default=None, metavar="RUN_DIR",
                 help="continue RUN_DIR from its last complete checkpoint")
  t.add_argument("--no-progress", action="store_true")

  e = sub.add_parser("eval", help="test log-likelihood of a run with importance sampling")
  e.add_argument("run_dir", type=pathlib.Path)
  e.add_argument("--num-samples", "-k", type=_positive_int, default=5000)
  e.add_argument("--chunk-size", type=_positive_int, default=250)
  e.add_argument("--batch-size", type=_positive_int, default=100)
  e.add_argument("--seed-index", type=_nonneg_int, default=None, help="one seed (default all)")
  e.add_argument("--split", choices=("test", "valid", "train"), default="test")
  e.add_argument("--limit", type=_positive_int, default=None, help="first N examples only")
  e.add_argument("--no-progress", action="store_true")

  s = sub.add_parser("sample", help="draw from the prior and decode, as a PNG grid")
  s.add_argument("run_dir", type=pathlib.Path)
  s.add_argument("-n", type=_positive_int, default=64)
  s.add_argument("--out", type=pathlib.Path, required=True)
  s.add_argument("--seed-index", type=_nonneg_int, default=0)
  s.add_argument("--seed", type=_nonneg_int, default=0)
  return parser
