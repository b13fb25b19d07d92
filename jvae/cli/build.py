"""What a run's config builds: its data, its model and its objectives (layer 6).

One place for every model family the command line trains:

* ``mlp``, ``kingma2014``, ``burda2015``: a :class:`jvae.VAE` with one stochastic layer; ``--prior``
  swaps N(0, I) for a learned prior (``jvae.VAE(base.encoder, base.decoder, prior=P)``).
* ``burda2015_2layer``, ``lvae``: :data:`jvae.PRESETS` models with a stochastic layer per
  ``--latent-dims`` entry (no closed-form KL: their ELBO samples it).
* ``cvae``: :func:`jvae.cvae` on ``Batch(x, c)`` data: c the one-hot label on digits, the
  ``--observed-quadrants`` of the image on MNIST (x the rest).
* ``m2``: the semi-supervised model of Kingma et al. (2014) on ``Batch(x, y, mask)`` digits,
  ``--labels`` of the training points labelled (chosen with ``--seed``, balanced over classes);
  trained on :func:`jvae.objectives.semi_supervised.semi_supervised_elbo`, validated and tested
  on the unlabelled bound U(x).

A run's data is a :class:`RunData`: three splits of arrays x, or of ``jvae.Batch(x, c)`` for a
conditional model, or ``jvae.Batch(x, y, mask)`` for a semi-supervised one, with a leading
example axis; code that slices them uses ``tree_map``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

import jvae
from jvae.cli import args as _cli
from jvae.io import conditional_data as _cdata
from jvae.io import data as _data
from jvae.io import datasets as _datasets
from jvae.io import semi_supervised as _sdata
from jvae.models.contract import num_examples
from jvae.models.m2 import m2 as _m2
from jvae.objectives import semi_supervised as _semi


@dataclasses.dataclass(frozen=True)
class RunData:
  """A run's train/valid/test splits and how to picture them.

  Attributes:
    name: the ``--data`` name.
    train, valid, test: numpy arrays ``(n, *event)``, or ``jvae.Batch(x, c)`` of them.
    event_shape: the shape of one x.
    image_shape: ``(h, w)`` of one picture: of x, or of the whole image x and c make up.
    conditioning: None (x alone), ``"label"`` (c one-hot labels) or ``"quadrants"`` (c the
      observed quadrants of the image).
    mask: for ``"quadrants"``, the ``(h, w)`` bool mask, True on the pixels in c.
    num_classes: for semi-supervised data (``Batch(x, y, mask)``, ``--model m2``), the number
      of classes of y; else None.
    binarize: ``"static"`` (binary x), ``"dynamic"`` (train x are grey levels, binarized afresh
      at every training batch; valid and test one fixed draw) or None (continuous x).
  """

  name: str
  train: Any
  valid: Any
  test: Any
  event_shape: tuple[int, ...]
  image_shape: tuple[int, int] | None
  conditioning: str | None = None
  mask: np.ndarray | None = None
  num_classes: int | None = None
  binarize: str | None = "static"

  @property
  def cond_dim(self) -> int:
    """The width of c (conditional data only)."""
    return int(self.train.c.shape[-1])

  def split(self, name: str):
    """The split ``name`` (``"train"``, ``"valid"`` or ``"test"``)."""
    return getattr(self, name)


def take(data, index):
  """``data`` (an array or a Batch of arrays) at ``index`` along the example axis."""
  return jax.tree_util.tree_map(lambda a: a[index], data)


def size(data) -> int:
  """The number of examples of an array or Batch data set."""
  return num_examples(data)


def load_dataset(cfg: dict) -> _data.Dataset:
  """``--data`` as a :class:`jvae.io.data.Dataset`, with ``--valid-size`` where given."""
  if cfg.get("valid_size") is None:
    return _data.load(cfg["data"])
  loader = {"mnist-dynamic": _datasets.load_mnist_dynamic,
            "fashion_mnist": _datasets.load_fashion_mnist,
            "omniglot": _datasets.load_omniglot}[cfg["data"]]
  try:
    return loader(valid_size=cfg["valid_size"])
  except ValueError as err:
    if isinstance(err, _data.DataIntegrityError):
      raise
    raise _cli.UsageError(f"--valid-size {cfg['valid_size']}: {err}") from None


def load_data(cfg: dict) -> RunData:
  """The data a config trains on: ``--data``, as ``Batch(x, c)`` splits for ``--model cvae``,
  ``Batch(x, y, mask)`` splits with ``--labels`` labelled training points for ``--model m2``.

  Raises:
    UsageError: ``--model m2`` on data without labels, or ``--labels`` the training set cannot
      give (more than its size, or more of a class than it has).
  """
  if cfg["model"] == "m2":
    return _semi_supervised_data(cfg)
  if cfg["model"] != "cvae":
    ds = load_dataset(cfg)
    return RunData(cfg["data"], ds.train, ds.valid, ds.test, tuple(ds.event_shape),
                   ds.image_shape, binarize=ds.binarize)
  if cfg["data"] == "digits":
    splits = _cdata.digits_conditional()
    return RunData(cfg["data"], *splits, splits.event_shape, _square(splits.event_shape),
                   conditioning="label")
  ds = _data.load(cfg["data"])
  observed = tuple(cfg.get("observed_quadrants") or (0,))
  splits = _cdata.mnist_quadrants(ds, observed=observed)
  return RunData(cfg["data"], *splits, splits.event_shape, tuple(ds.image_shape),
                 conditioning="quadrants", mask=_cdata.quadrant_mask(ds.image_shape, observed))


def _semi_supervised_data(cfg: dict) -> RunData:
  if cfg["data"] not in _cli.LABELLED_DATASETS:
    raise _cli.UsageError(f"--model m2 needs class labels, which --data {cfg['data']} does not "
                          f"have; use --data {' or '.join(_cli.LABELLED_DATASETS)}")
  if cfg.get("labels") is None:
    raise _cli.UsageError("--model m2 needs --labels N, the number of labelled training points")
  binarize, image_shape = "static", None
  try:
    if cfg["data"] == "digits":
      splits = _sdata.digits_semi_supervised(num_labels=cfg["labels"], seed=cfg["seed"])
    else:
      ds = load_dataset(cfg)
      splits = _sdata.labelled_semi_supervised(ds, num_labels=cfg["labels"], seed=cfg["seed"])
      binarize, image_shape = ds.binarize, ds.image_shape
  except ValueError as err:
    raise _cli.UsageError(f"--labels {cfg['labels']}: {err}") from None
  return RunData(cfg["data"], splits.train, splits.valid, splits.test, splits.event_shape,
                 image_shape or _square(splits.event_shape), num_classes=splits.num_classes,
                 binarize=binarize)


def classifier_weight(cfg: dict, data) -> float:
  """α of ``--model m2``: ``--classifier-weight``, else Kingma et al.'s 0.1·N/N_labels.

  Args:
    cfg: the run's config.
    data: its :class:`RunData` (N is the size of its training split), or None when
      ``--classifier-weight`` is given.
  """
  if cfg.get("classifier_weight") is not None:
    return float(cfg["classifier_weight"])
  if cfg.get("labels") is None:
    raise ValueError("--model m2 needs --labels N, the number of labelled training points")
  if not isinstance(data, RunData):
    raise ValueError("the default --classifier-weight of --model m2 needs the run's data")
  return _semi.kingma_alpha(num_examples=size(data.train), num_labels=cfg["labels"])


def _square(event_shape) -> tuple[int, int]:
  side = math.isqrt(math.prod(event_shape))
  return side, side


def build_model(cfg: dict, data):
  """The model a config describes.

  Args:
    cfg: the run's config (``config.json``).
    data: the run's :class:`RunData`, or the event shape of x for a model without conditioning.
  """
  event_shape = tuple(data.event_shape if isinstance(data, RunData) else data)
  model = cfg["model"]
  if model == "m2":
    classes = data.num_classes if isinstance(data, RunData) and data.num_classes else (
        _sdata.DIGITS_CLASSES)
    return _m2(event_shape=event_shape, num_classes=classes,
               latent_dim=_cli.latent_size(model, cfg["latent_dim"]),
               hidden=tuple(cfg["hidden"] or _cli.HIDDEN[model]))
  if model == "cvae":
    if not isinstance(data, RunData) or data.conditioning is None:
      raise ValueError("--model cvae needs conditional data (its RunData)")
    return jvae.cvae(event_shape=event_shape, cond_dim=data.cond_dim,
                     latent_dim=_cli.latent_size(model, cfg["latent_dim"]),
                     hidden=tuple(cfg["hidden"] or _cli.HIDDEN[model]))
  if model in _cli.LAYERED_MODELS:
    hidden, dims = _cli.layer_sizes(model, cfg["hidden"], cfg.get("latent_dims"))
    likelihood = _cli.resolve_likelihood(cfg)
    if model == "lvae":
      return jvae.PRESETS[model](event_shape=event_shape, hidden=hidden, latent_dims=dims,
                                 likelihood=likelihood)
    return jvae.PRESETS[model](event_shape=event_shape, latent_dims=dims, likelihood=likelihood,
                               hidden=tuple((h, h) for h in hidden),
                               posterior=cfg["posterior"], iaf_steps=cfg["iaf_steps"])
  likelihood = _cli.resolve_likelihood(cfg)
  kwargs = {"event_shape": event_shape, "posterior": cfg["posterior"], "likelihood": likelihood,
            "iaf_steps": cfg["iaf_steps"], "latent_dim": _cli.latent_size(model, cfg["latent_dim"])}
  if model == "mlp":
    base = jvae.mlp_vae(hidden=tuple(cfg["hidden"] or _cli.HIDDEN[model]), **kwargs)
  else:
    base = jvae.PRESETS[model](**kwargs)
  prior = cfg.get("prior") or "standard"
  if prior == "standard":
    return base
  latent = kwargs["latent_dim"]
  if prior == "learned":
    p = jvae.LearnedGaussianPrior(latent)
  elif prior == "mixture":
    p = jvae.MixturePrior(latent, cfg["prior_components"])
  elif prior == "vamp":
    p = jvae.VampPrior(cfg["vamp_components"], event_shape)
  else:
    raise ValueError(f"unknown prior {prior!r}; expected one of {_cli.PRIORS}")
  return jvae.VAE(base.encoder, base.decoder, prior=p)


def build_bound(model, cfg: dict, *, for_training: bool, data=None):
  """The objective a config trains (``for_training``) or validates with (no free bits).

  For ``--model m2``: the semi-supervised ELBO (training; ``data``, the run's :class:`RunData`,
  gives the default ``--classifier-weight``) or the unlabelled bound U(x) (validation).
  """
  bound, k, est = cfg["bound"], cfg["num_samples"], cfg["estimator"]
  if cfg["model"] == "m2":
    if bound != "elbo" or cfg["free_bits"] is not None:
      raise ValueError("--model m2 trains its semi-supervised ELBO: --bound elbo, no --free-bits")
    kl = _cli.resolve_kl(cfg)
    if not for_training:
      return _semi.unlabelled_elbo(model, num_samples=k, kl=kl)
    return _semi.semi_supervised_elbo(model, alpha=classifier_weight(cfg, data), num_samples=k,
                                      kl=kl, estimator=est)
  if bound == "elbo":
    kl = _cli.resolve_kl(cfg)
    if not for_training:
      return jvae.elbo(model, num_samples=k, kl=kl)
    return jvae.elbo(model, num_samples=k, kl=kl, estimator=est, free_bits=cfg["free_bits"],
                     free_bits_groups=cfg["free_bits_groups"])
  if cfg["free_bits"] is not None:
    raise ValueError("--free-bits applies to --bound elbo only")
  if bound == "iwae":
    return jvae.iwae(model, num_samples=k, estimator=est)
  if bound == "renyi":
    return jvae.renyi(model, alpha=cfg["alpha"], num_samples=k, estimator=est)
  if bound == "ciwae":
    return jvae.ciwae(model, num_samples=k, elbo_weight=cfg["elbo_weight"], estimator=est)
  if bound == "miwae":
    return jvae.miwae(model, num_groups=cfg["groups"], num_samples=k, estimator=est)
  return jvae.piwae(model, num_groups=cfg["groups"], num_samples=k, estimator=est)


def complete_config(cfg: dict, keys) -> dict:
  """``cfg`` with every option in ``keys`` it lacks at the parser's default.

  A run saved before an option existed (e.g. ``--prior``) ran with that option's default.
  """
  defaults = _cli.default_train_options()
  return {**{k: _normal(defaults[k]) for k in keys if k not in cfg and k in defaults}, **cfg}


def _normal(value):
  return list(value) if isinstance(value, tuple) else value
