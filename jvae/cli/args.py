"""The ``jvae`` command line: its arguments, parsed into validated values (layer 6)."""

from __future__ import annotations

import argparse
import math
import pathlib

BOUNDS = ("elbo", "iwae", "renyi", "miwae", "ciwae", "piwae")
VAE_MODELS = ("mlp", "kingma2014", "burda2015")  # one stochastic layer: take --prior
LAYERED_MODELS = ("burda2015_2layer", "lvae")  # several stochastic layers: no closed-form KL
MODELS = (*VAE_MODELS, *LAYERED_MODELS, "cvae", "m2")
PRIORS = ("standard", "learned", "mixture", "vamp")
POSTERIORS = ("gaussian", "fullcov", "iaf")
ESTIMATORS = ("reparam", "stl", "dreg")
OPTIMIZERS = ("adam", "adamax")
DATASETS = ("digits", "binarized_mnist", "mnist", "mnist-dynamic", "omniglot", "fashion_mnist",
            "frey")
# Data sets whose x are grey levels in [0, 1], binarized afresh at every training batch.
DYNAMIC_DATASETS = ("mnist-dynamic", "omniglot", "fashion_mnist")
# Data sets of continuous x, for which --likelihood defaults to gaussian.
CONTINUOUS_DATASETS = ("frey",)
LIKELIHOODS = ("bernoulli", "gaussian")
# --model cvae on quadrants: the statically binarized MNIST only.
QUADRANT_DATASETS = ("binarized_mnist", "mnist")
DEFAULT_EPOCHS = 100
DEFAULT_ADAM_EPS = 1e-8  # optax.adam and optax.adamax


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


class UsageError(ValueError):
  """An impossible combination of options: reported as a usage error, not a traceback."""


LATENT_DIMS = {"mlp": 8, "kingma2014": 20, "burda2015": 50, "cvae": 20, "m2": 50}  # size of z
# The default --hidden of the models that take it (for layered models: one width per layer).
HIDDEN = {"mlp": (128, 64), "cvae": (500,), "burda2015_2layer": (200, 100), "lvae": (512, 256),
          "m2": (500,)}
# The data sets with class labels, for --model m2 (binarized MNIST has none).
LABELLED_DATASETS = ("digits", "mnist-dynamic", "fashion_mnist")
# The default --latent-dims of the layered models, (d_1, …, d_L).
LAYER_LATENT_DIMS = {"burda2015_2layer": (100, 50), "lvae": (64, 32)}
DEFAULT_VAMP_COMPONENTS = 50
MATMUL_PRECISIONS = ("float32", "bfloat16", "float16")
DEFAULT_PRIOR_COMPONENTS = 10
# Options a resumed run may change; every other option must agree with the saved run.
# devices and parallel choose where the same computation runs: a run may move to another machine.
RESUME_MAY_CHANGE = ("epochs", "patience", "eval_samples", "seed_chunk", "unroll", "devices",
                     "parallel", "no_progress")


def _add_train_arguments(t: argparse.ArgumentParser) -> list[argparse.Action]:
  """Adds ``jvae train``'s options to ``t``; returns their actions."""
  add = t.add_argument
  return [
      add("--data", choices=DATASETS, default="digits",
          help="digits: scikit-learn's 8x8 digits, binarized (the default, bundled); "
               "binarized_mnist (alias mnist): the statically binarized MNIST of Larochelle & "
               "Murray, 50k/10k/10k; mnist-dynamic: the canonical MNIST, a fresh Bernoulli draw of "
               "every training batch and one fixed draw of valid and test (Burda et al. 2015), "
               "with labels; omniglot: Burda et al.'s 28x28 Omniglot (chardata.mat), binarized "
               "dynamically; fashion_mnist: Fashion-MNIST, binarized dynamically, with labels; "
               "frey: the Frey faces, 28x20 grey levels, continuous (--likelihood gaussian). "
               "Files are downloaded once into $JVAE_DATA_DIR (else ~/.cache/jvae) and "
               "verified by checksum"),
      add("--valid-size", type=_positive_int, default=None, metavar="N",
          help="--data mnist-dynamic, fashion_mnist, omniglot: the last N training images are "
               "the validation split (default 10,000 for the MNISTs, Burda's 1,345 for "
               "Omniglot; Burda et al. 2015 hold out 400 of MNIST's 60,000)"),
      add("--likelihood", choices=LIKELIHOODS, default=None,
          help="p(x|z) of mlp, kingma2014, burda2015, burda2015_2layer and lvae: bernoulli "
               "(default for binary data) or gaussian with a learned scale (default for --data "
               "frey)"),
      add("--model", choices=MODELS, default="mlp",
          help="mlp: --hidden/--latent-dim; kingma2014: 784-500-20; burda2015: 784-200-200-50; "
               "burda2015_2layer: two stochastic layers, 784-(200,200)-100-(100,100)-50 "
               "(Burda et al. 2015); lvae: a ladder VAE (Sønderby et al. 2016), blocks of two "
               "layers 512, 256, latents 64, 32; cvae: a conditional VAE (Sohn et al. 2015), on "
               "the one-hot label for --data digits, on --observed-quadrants for MNIST; m2: the "
               "semi-supervised model of Kingma et al. 2014 (q(y|x), q(z|x,y), p(x|y,z); "
               "--data digits, --labels N labelled training points, --hidden default 500, "
               "--latent-dim default 50)"),
      add("--hidden", type=_positive_int, nargs="+", default=None,
          help="hidden widths: mlp (default 128 64), cvae and m2 (default 500): the encoder's "
               "layers (and m2's classifier's), mirrored in the decoder; burda2015_2layer "
               "(default 200 100) and lvae "
               "(default 512 256): one width per stochastic layer, for its networks of two "
               "layers of that width"),
      add("--latent-dim", type=_positive_int, default=None,
          help="size of z (default: mlp 8, kingma2014 20, burda2015 50, cvae 20, m2 50)"),
      add("--latent-dims", type=_positive_int, nargs="+", default=None, metavar="D",
          help="sizes d_1 … d_L of the stochastic layers of burda2015_2layer (default 100 50) "
               "and lvae (default 64 32); as many as --hidden widths"),
      add("--prior", choices=PRIORS, default="standard",
          help="p(z) of the one-layer models (mlp, kingma2014, burda2015): standard N(0, I), "
               "learned (a learned diagonal Gaussian), mixture (a learned mixture of "
               "--prior-components Gaussians) or vamp (the VampPrior of Tomczak & Welling "
               "2018, --vamp-components pseudo-inputs); mixture and vamp have no closed-form KL"),
      add("--vamp-components", type=_positive_int, default=DEFAULT_VAMP_COMPONENTS, metavar="N",
          help=f"pseudo-inputs of --prior vamp (default {DEFAULT_VAMP_COMPONENTS}, for speed; "
               "Tomczak & Welling use 500 on MNIST)"),
      add("--prior-components", type=_positive_int, default=DEFAULT_PRIOR_COMPONENTS,
          metavar="N", help=f"components of --prior mixture (default {DEFAULT_PRIOR_COMPONENTS})"),
      add("--observed-quadrants", type=int, choices=range(4), nargs="+", default=(0,),
          metavar="Q", help="--model cvae on MNIST: the quadrants given as c (0 top-left, "
                            "1 top-right, 2 bottom-left, 3 bottom-right; default 0); x is the "
                            "rest of the image"),
      add("--labels", type=_positive_int, default=None, metavar="N",
          help="--model m2: the number of labelled training points (balanced over classes, "
               "chosen with --seed; e.g. 100); the others are used unlabelled"),
      add("--classifier-weight", type=_nonneg_float, default=None, metavar="A",
          help="--model m2: the weight α of log q(y|x) at each labelled point (Kingma et al. "
               "2014, Eq. 9); default 0.1·N/N_labels, the paper's α = 0.1·N"),
      add("--posterior", choices=POSTERIORS, default="gaussian"),
      add("--iaf-steps", type=_nonneg_int, default=2),
      add("--bound", choices=BOUNDS, default="elbo"),
      add("--num-samples", "-k", type=_positive_int, default=1,
          help="samples K per data point (per group for miwae/piwae)"),
      add("--groups", type=_positive_int, default=1, help="M for miwae/piwae"),
      add("--alpha", type=_nonneg_float, default=0.5, help="order of the Rényi bound"),
      add("--elbo-weight", type=_nonneg_float, default=0.5, help="β of CIWAE, in [0, 1]"),
      add("--kl", choices=("analytic", "sample"), default=None,
          help="ELBO KL term (default: analytic when it exists, else sample: for --posterior "
               "iaf, --estimator stl/dreg, --prior mixture/vamp, burda2015_2layer and lvae)"),
      add("--estimator", choices=ESTIMATORS, default="reparam"),
      add("--warmup-steps", type=_nonneg_int, default=0, help="KL warm-up length"),
      add("--beta", type=_nonneg_float, default=1.0, help="(final) KL weight β"),
      add("--free-bits", type=_nonneg_float, default=None,
          help="λ in nats per group of latent dimensions (per stochastic layer for "
               "burda2015_2layer and lvae)"),
      add("--free-bits-groups", type=_positive_int, default=None,
          help="number of groups; must divide the latent size (the number of layers)"),
      add("--matmul-precision", choices=MATMUL_PRECISIONS, default="float32",
          help="the training step's matmuls (every flax Dense layer): float32 (the default), or "
               "bfloat16/float16 operands with float32 accumulation, forward and backward "
               "(jvae.mixed_precision); parameters, optimizer state and every reported bound "
               "(validation, test, jvae eval) stay float32"),
      add("--sub-batches", type=_positive_int, default=1, metavar="S",
          help="compute each batch's bound as S independent sub-batches side by side "
               "(jvae.trainer(sub_batches=S)): the same estimator with another random stream; "
               "on a CPU XLA can run their matmuls on different cores (2 on 2 cores); keep 1 "
               "on a GPU. Must divide --batch-size"),
      add("--unroll", type=_positive_int, default=1, metavar="U",
          help="training steps per iteration of the epoch's scan (jvae.trainer(unroll=U)): the "
               "same steps, the same result up to float rounding, a longer compile; on a "
               "2-core CPU U=2 with --sub-batches 2 trains fastest; may change with --resume"),
      add("--epochs", type=_nonneg_int, default=None,
          help=f"number of epochs (default {DEFAULT_EPOCHS}); with --resume, a new total"),
      add("--batch-size", type=_positive_int, default=100),
      add("--lr", type=_positive_float, default=1e-3),
      add("--optimizer", choices=OPTIMIZERS, default="adam"),
      add("--adam-eps", type=_positive_float, default=DEFAULT_ADAM_EPS, metavar="EPS",
          help=f"ε of Adam and Adamax (default {DEFAULT_ADAM_EPS:g}, optax's; Burda et al. 2015 "
               "use 1e-4)"),
      add("--lr-stages", type=_positive_int, nargs="+", default=None, metavar="E",
          help="a staged learning rate: stage i of n runs E_i epochs at --lr · 10^(-i/(n-1)) "
               "(Burda et al. 2015: --lr 1e-3 --lr-stages 1 3 9 27 81 243 729 2187, 3,280 "
               "epochs); --epochs defaults to the sum, and past it the last rate stays"),
      add("--patience", type=_positive_int, default=None,
          help="early stopping: epochs without validation improvement"),
      add("--seed", type=_nonneg_int, default=0),
      add("--seeds", type=_positive_int, default=1, help="train N seeds in one program"),
      add("--devices", type=_positive_int, default=None,
          help="shard over this many devices (see --parallel); may change with --resume (e.g. "
               "a run started on a CPU's cores goes on on one GPU with --devices 1)"),
      add("--parallel", choices=("data", "seeds"), default="data"),
      add("--seed-chunk", type=_seed_chunk, default="auto", metavar="K|auto",
          help="with --seeds: train K seeds per vmap (per device with --parallel seeds), "
               "lax.map over the chunks (auto: 1 on a CPU, 4 seeds' plain steps then sharing "
               "one scan body; all at once on an accelerator); speed only"),
      add("--eval-samples", type=_positive_int, default=None,
          help="K of the final test IWAE / log-likelihood estimate (default 100), its samples "
               "drawn 40 at a time and the seeds tested one after another: memory bounded "
               "whatever K and --seeds are"),
      add("--out", type=pathlib.Path, default=None,
          help="run directory (default runs/<date-time>, made unique)"),
      add("--resume", type=pathlib.Path, default=None, metavar="RUN_DIR",
          help="continue RUN_DIR from its last complete checkpoint; only "
               + ", ".join(f"--{k.replace('_', '-')}" for k in RESUME_MAY_CHANGE[:-1])
               + f" and --{RESUME_MAY_CHANGE[-1].replace('_', '-')} may be given with it"),
      add("--no-progress", action="store_true"),
  ]


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="jvae", description="Train, evaluate and sample variational autoencoders.")
  sub = parser.add_subparsers(dest="command", required=True)

  t = sub.add_parser("train", help="train a latent-variable model (default: a small MLP VAE on "
                                   "digits)")
  _add_train_arguments(t)

  e = sub.add_parser("eval", help="test log-likelihood of a run with importance sampling (IWAE) "
                                  "or annealed importance sampling (AIS)")
  e.add_argument("run_dir", type=pathlib.Path)
  e.add_argument("--method", choices=("iwae", "ais"), default="iwae",
                 help="iwae: log_marginal with -k samples; ais: AIS with HMC (Wu et al. 2017)")
  e.add_argument("--ais-steps", type=_positive_int, default=1000, help="AIS annealing steps")
  e.add_argument("--ais-chains", type=_positive_int, default=16, help="AIS chains per image")
  e.add_argument("--ais-init", choices=("prior", "posterior"), default="prior",
                 help="AIS from p(z) or from the encoder's q(z|x)")
  e.add_argument("--num-samples", "-k", type=_positive_int, default=5000)
  e.add_argument("--chunk-size", type=_positive_int, default=250)
  e.add_argument("--batch-size", type=_positive_int, default=100)
  e.add_argument("--seed-index", type=_nonneg_int, default=None, help="one seed (default all)")
  e.add_argument("--split", choices=("test", "valid", "train"), default="test")
  e.add_argument("--limit", type=_positive_int, default=None, help="first N examples only")
  e.add_argument("--no-progress", action="store_true")

  g = sub.add_parser("gap", help="approximation and amortization gaps of a run (Cremer et al. "
                                 "2018), written to RUN/gap-<split>-<N>.json")
  g.add_argument("run_dir", type=pathlib.Path)
  g.add_argument("--num-points", type=_positive_int, default=100)
  g.add_argument("--split", choices=("test", "valid", "train"), default="test")
  g.add_argument("--seed-index", type=_nonneg_int, default=0)
  g.add_argument("--log-marginal", choices=("iwae", "ais"), default="iwae",
                 help="the estimate of log p(x): IWAE with -k samples, or AIS")
  g.add_argument("--num-samples", "-k", type=_positive_int, default=5000)
  g.add_argument("--ais-steps", type=_positive_int, default=1000)
  g.add_argument("--ais-chains", type=_positive_int, default=16)
  g.add_argument("--local-steps", type=_positive_int, default=1000,
                 help="optimizer steps of each point's local q*")
  g.add_argument("--eval-samples", type=_positive_int, default=1000,
                 help="samples for each ELBO estimate")

  s = sub.add_parser("sample", help="draw from the prior and decode, as a PNG grid (cvae: one "
                                    "row per class on digits, completions of test images' "
                                    "observed quadrants on MNIST)")
  s.add_argument("run_dir", type=pathlib.Path)
  s.add_argument("-n", type=_positive_int, default=64,
                 help="images (cvae on digits: ceil(n / 10) per class)")
  s.add_argument("--out", type=pathlib.Path, required=True)
  s.add_argument("--seed-index", type=_nonneg_int, default=0)
  s.add_argument("--seed", type=_nonneg_int, default=0)
  return parser


def explicit_train_options(argv) -> set[str]:
  """Names (``dest``) of the ``jvae train`` options given in ``argv`` (the words after ``train``).

  A default is not "given": ``--lr 1e-3`` is, no ``--lr`` is not, whatever the default is.
  """
  p = argparse.ArgumentParser(add_help=False)
  for action in _add_train_arguments(p):
    action.default = argparse.SUPPRESS  # an option not given leaves no attribute
  return set(vars(p.parse_args(list(argv))))


def default_train_options() -> dict:
  """The parser's default of every ``jvae train`` option, by ``dest``."""
  p = argparse.ArgumentParser(add_help=False)
  return {a.dest: a.default for a in _add_train_arguments(p)}


def resolve_likelihood(o: dict) -> str:
  """``--likelihood``, or its default: gaussian for continuous data (frey), else bernoulli."""
  if o.get("likelihood"):
    return o["likelihood"]
  return "gaussian" if o["data"] in CONTINUOUS_DATASETS else "bernoulli"


def latent_size(model: str, latent_dim: int | None) -> int:
  """The size of z that ``--model`` and ``--latent-dim`` give (models with one stochastic layer)."""
  return latent_dim if latent_dim is not None else LATENT_DIMS[model]


def layer_sizes(model: str, hidden, latent_dims) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """``(hidden, latent_dims)`` of a layered model: ``--hidden`` and ``--latent-dims`` or defaults.

  One hidden width and one latent size per stochastic layer; the lengths are checked by
  :func:`check_train_options`.
  """
  return (tuple(hidden or HIDDEN[model]),
          tuple(latent_dims or LAYER_LATENT_DIMS[model]))


def no_closed_form_kl(o: dict) -> str | None:
  """Why a config's ELBO has no closed-form KL, as ``--option value`` text; None if it has one."""
  if o["posterior"] == "iaf":
    return "--posterior iaf"
  if o["model"] in LAYERED_MODELS:
    return (f"--model {o['model']} (the KL of a hierarchy of layers has none; the sampled "
            "log q - log p is used)")
  prior = o.get("prior") or "standard"
  if prior in ("mixture", "vamp"):
    return f"--prior {prior} (a mixture prior)"
  return None


def resolve_kl(o: dict) -> str:
  """The ELBO's KL term of a config: ``--kl``, else analytic where it exists and may be used."""
  if o.get("kl"):
    return o["kl"]
  if no_closed_form_kl(o) or o["estimator"] != "reparam":
    return "sample"
  return "analytic"


def check_train_options(args, given) -> None:
  """Raises UsageError for options that cannot work together; reads and writes nothing.

  Run before anything touches the disk. ``given`` names the options written on the command line:
  an option the chosen model or bound ignores is an error only when it was given.

  Args:
    args: the parsed ``jvae train`` namespace (all options, defaults filled in).
    given: ``dest`` names of the options given explicitly (see ``explicit_train_options``).
  """
  problems = _option_problems(vars(args), set(given))
  if problems:
    raise UsageError("; ".join(problems))


def _option_problems(o: dict, given: set[str]) -> list[str]:
  bound, est, post = o["bound"], o["estimator"], o["posterior"]
  out = _model_problems(o, given)
  if post != "iaf" and "iaf_steps" in given:
    out.append(f"--iaf-steps applies to --posterior iaf only, not {post}")
  if bound != "renyi" and "alpha" in given:
    out.append(f"--alpha applies to --bound renyi only, not {bound}"
               + ("; the weight of m2's classification term is --classifier-weight"
                  if o["model"] == "m2" else ""))
  if bound != "ciwae" and "elbo_weight" in given:
    out.append(f"--elbo-weight applies to --bound ciwae only, not {bound}")
  if o["elbo_weight"] > 1:
    out.append(f"--elbo-weight must be in [0, 1], got {o['elbo_weight']:g}")
  if bound not in ("miwae", "piwae") and o["groups"] != 1:
    out.append(f"--groups {o['groups']} applies to --bound miwae/piwae only, not {bound}")
  if bound != "elbo" and o["kl"] is not None:
    out.append(f"--kl applies to --bound elbo only, not {bound}")
  allowed = {"renyi": ("reparam", "stl"), "ciwae": ("reparam", "stl"),
             "piwae": ("reparam", "dreg")}.get(bound, ESTIMATORS)
  if est not in allowed:
    out.append(f"--bound {bound} takes --estimator {' or '.join(allowed)}, not {est}")
  no_kl = no_closed_form_kl(o)
  if o["kl"] == "analytic" and no_kl:
    out.append(f"--kl analytic has no closed form for {no_kl}; use --kl sample")
  if o["kl"] == "analytic" and est != "reparam":
    out.append(f"--estimator {est} drops the score term of log q(z|x), which needs --kl sample; "
               "--kl analytic has no such term")
  out += _free_bits_problems(o, bound, post)
  return out + device_problems(o)


def device_problems(o: dict) -> list[str]:
  """How ``--devices``, ``--parallel``, ``--seeds``, ``--batch-size`` and ``--sub-batches`` fail
  to fit together (also checked on a resumed run, whose devices may change)."""
  out = []
  devices = o["devices"]
  if devices and o["parallel"] == "seeds" and o["seeds"] % devices:
    out.append(f"--parallel seeds needs --seeds ({o['seeds']}) to be a multiple of --devices "
               f"({devices})")
  if devices and o["parallel"] == "data" and o["batch_size"] % devices:
    out.append(f"--parallel data needs --batch-size ({o['batch_size']}) to be a multiple of "
               f"--devices ({devices})")
  sub = o["sub_batches"]
  if o["batch_size"] % sub:
    out.append(f"--sub-batches {sub} must divide --batch-size ({o['batch_size']})")
  if sub > 1 and devices and o["parallel"] == "data":
    out.append(f"--sub-batches {sub} and --parallel data exclude each other: the devices "
               "already split each batch")
  return out


def _model_problems(o: dict, given: set[str]) -> list[str]:
  """The options that do not fit ``--model`` (its sizes, posterior, prior and data)."""
  model, post, prior = o["model"], o["posterior"], o["prior"]
  out = []
  if model not in HIDDEN and "hidden" in given:
    out.append(f"--hidden applies to --model mlp only (and to burda2015_2layer, lvae, cvae and "
               f"m2): --model {model} has fixed widths")
  if model in LAYERED_MODELS:
    if "latent_dim" in given:
      out.append(f"--latent-dim applies to the models with one stochastic layer; --model {model} "
                 "takes --latent-dims D1 D2 (a size per layer)")
    hidden, dims = layer_sizes(model, o["hidden"], o["latent_dims"])
    if len(hidden) != len(dims):
      out.append(f"--model {model} needs a --hidden width per stochastic layer: {len(dims)} "
                 f"latent sizes ({' '.join(map(str, dims))}) but {len(hidden)} widths "
                 f"({' '.join(map(str, hidden))}); give --hidden and --latent-dims of one length")
  elif "latent_dims" in given:
    out.append(f"--latent-dims applies to --model burda2015_2layer and lvae only; --model {model} "
               "takes --latent-dim")
  out += _semi_supervised_problems(o, given)
  if model in ("lvae", "cvae", "m2") and post != "gaussian":
    out.append(f"--posterior {post}: --model {model} has a Gaussian posterior only")
  if model == "cvae" and "prior" in given:
    out.append("--prior applies to --model mlp, kingma2014 and burda2015 only: --model cvae has "
               "its own learned prior p(z|c)")
  elif model == "m2" and "prior" in given:
    out.append("--prior applies to --model mlp, kingma2014 and burda2015 only: --model m2 has "
               "p(z) = N(0, I) and a uniform p(y)")
  elif model in LAYERED_MODELS and prior != "standard":
    out.append(f"--prior {prior} applies to --model mlp, kingma2014 and burda2015 only: "
               f"--model {model} has p(z_L) = N(0, I)")
  if prior != "vamp" and "vamp_components" in given:
    out.append(f"--vamp-components applies to --prior vamp only, not {prior}")
  if prior != "mixture" and "prior_components" in given:
    out.append(f"--prior-components applies to --prior mixture only, not {prior}")
  if model == "cvae" and o["data"] not in ("digits", *QUADRANT_DATASETS):
    out.append(f"--model cvae runs on --data digits (conditioned on the label) or on the "
               f"statically binarized MNIST (--data binarized_mnist, on quadrants), not "
               f"--data {o['data']}")
  if "likelihood" in given and model in ("cvae", "m2"):
    out.append(f"--likelihood applies to --model mlp, kingma2014, burda2015, burda2015_2layer "
               f"and lvae: --model {model} has a Bernoulli p(x|...)")
  if "valid_size" in given and o["data"] not in DYNAMIC_DATASETS:
    out.append(f"--valid-size applies to --data {', '.join(DYNAMIC_DATASETS)}, whose "
               f"validation images come from the training files; --data {o['data']} has a "
               "fixed split")
  if model == "m2" and o["data"] in CONTINUOUS_DATASETS:
    out.append(f"--model m2 needs binary data, not --data {o['data']}")
  quadrants = list(o["observed_quadrants"])
  if "observed_quadrants" in given:
    if model != "cvae" or o["data"] == "digits":
      out.append("--observed-quadrants applies to --model cvae on MNIST (--data binarized_mnist "
                 "or mnist) only" + ("; on digits a cvae is conditioned on the class label"
                                     if model == "cvae" else ""))
    if len(set(quadrants)) != len(quadrants) or len(quadrants) > 3:
      out.append("--observed-quadrants must name 1 to 3 distinct quadrants of 0 1 2 3, got "
                 + " ".join(map(str, quadrants)))
  return out


def _semi_supervised_problems(o: dict, given: set[str]) -> list[str]:
  """The options of the semi-supervised --model m2 (and their absence elsewhere)."""
  model = o["model"]
  if model != "m2":
    return [f"--{name.replace('_', '-')} applies to --model m2 only, not {model}"
            for name in ("labels", "classifier_weight") if name in given]
  out = []
  if o.get("labels") is None:
    out.append("--model m2 needs --labels N, the number of labelled training points (e.g. 100)")
  if o["data"] not in LABELLED_DATASETS:
    out.append(f"--model m2 needs class labels, which --data {o['data']} does not have (the "
               f"binarized MNIST files carry none); use --data {' or '.join(LABELLED_DATASETS)}")
  if o["bound"] != "elbo":
    out.append(f"--model m2 trains its semi-supervised ELBO (Kingma et al. 2014, Eq. 9), not "
               f"--bound {o['bound']}")
  if o["estimator"] not in ("reparam", "stl"):
    out.append(f"--model m2 takes --estimator reparam or stl, not {o['estimator']}")
  return out


def _free_bits_problems(o: dict, bound: str, post: str) -> list[str]:
  fb, groups = o["free_bits"], o["free_bits_groups"]
  if fb is None:
    return ["--free-bits-groups needs --free-bits"] if groups is not None else []
  if o["model"] == "m2":
    return ["--free-bits does not apply to --model m2 (its KL includes the label's)"]
  out = []
  if bound != "elbo":
    out.append(f"--free-bits applies to --bound elbo only, not {bound}")
  model = o["model"]
  if model in LAYERED_MODELS:  # one KL group per layer, for any posterior; the KL is sampled
    layers = len(layer_sizes(model, o["hidden"], o["latent_dims"])[1])
    if groups is not None and layers % groups:
      out.append(f"--free-bits-groups {groups} does not divide the number of stochastic layers "
                 f"{layers} of --model {model} (free bits act per layer)")
    return out
  if post != "gaussian":
    out.append(f"--free-bits needs a per-dimension KL, which only --posterior gaussian has "
               f"(not {post})")
  elif o["prior"] in ("mixture", "vamp"):
    out.append(f"--free-bits needs a per-dimension KL, which --prior {o['prior']} (a mixture) "
               "does not have; use --prior standard or learned")
  latent = latent_size(model, o["latent_dim"])
  if groups is not None and latent % groups:
    out.append(f"--free-bits-groups {groups} does not divide the latent size {latent} "
               f"(--model {model}"
               + (f", --latent-dim {o['latent_dim']})" if o["latent_dim"] is not None else ")"))
  return out
