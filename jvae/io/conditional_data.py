r"""Data sets for conditional models: one-hot labels and image quadrants (layer 6).

The two demonstrations of :class:`jvae.ConditionalVAE` (Sohn et al. 2015): MNIST quadrant
completion (c = the observed quadrant(s) of a 28×28 image, x = the rest: :func:`mnist_quadrants`,
:func:`quadrant_split`) and class-conditional digits (c = the one-hot label:
:func:`digits_conditional`, :func:`class_conditional_grid`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np
import sklearn.datasets

from jvae.io import data as _data
from jvae.models.conditional import ConditionalVAE
from jvae.models.contract import Batch

Array = jax.Array


class ConditionalSplits(NamedTuple):
  """Train/valid/test :class:`jvae.Batch` data sets ``Batch(x, c)`` of numpy arrays."""

  train: Batch
  valid: Batch
  test: Batch

  @property
  def event_shape(self) -> tuple[int, ...]:
    """The shape of one x."""
    return tuple(self.train.x.shape[1:])

  @property
  def cond_dim(self) -> int:
    """The width of c."""
    return int(self.train.c.shape[-1])


def one_hot_labels(y, num_classes: int) -> np.ndarray:
  """Integer labels ``(n,)`` in ``[0, num_classes)`` as float32 one-hot rows ``(n, num_classes)``.

  Raises:
    ValueError: y is not a 1-D array of integers in range.
  """
  y = np.asarray(y)
  if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"y must be a 1-D array of integer labels, got {y.dtype} {y.shape}")
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}), got range [{y.min()}, {y.max()}]")
  return np.eye(num_classes, dtype=np.float32)[y]


def quadrant_mask(image_shape: Sequence[int] = (28, 28), observed: Sequence[int] = (0,)):
  """The ``(h, w)`` bool mask, True on the ``observed`` quadrants.

  Quadrants are numbered 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right; h and w must be
  even. Raises ValueError for an empty, complete, repeated or out-of-range ``observed``.
  """
  h, w = (int(s) for s in image_shape)
  if h % 2 or w % 2:
    raise ValueError(f"quadrants need an even image shape, got {(h, w)}")
  observed = tuple(int(q) for q in observed)
  if (not observed or len(set(observed)) != len(observed) or len(observed) == 4
      or any(q not in range(4) for q in observed)):
    raise ValueError("observed must name 1 to 3 distinct quadrants in 0..3 (0 top-left, 1 "
                     f"top-right, 2 bottom-left, 3 bottom-right), got {observed}")
  mask = np.zeros((h, w), bool)
  for q in observed:
    r, col = divmod(q, 2)
    mask[r * h // 2:(r + 1) * h // 2, col * w // 2:(col + 1) * w // 2] = True
  return mask


def quadrant_split(images, observed: Sequence[int] = (0,),
                   image_shape: Sequence[int] | None = None):
  """Split images into the unobserved pixels x and the observed quadrant(s) c.

  For quadrant completion (Sohn et al. 2015, Sec. 5.1: MNIST with one to three quadrants given):
  c is the observed part, x the rest, both flattened in row-major order.

  Args:
    images: ``(n, h, w)`` or flat ``(n, h·w)`` (square images, e.g. 784 → 28×28).
    observed: quadrant numbers (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right).
    image_shape: ``(h, w)`` for flat images that are not square.

  Returns:
    ``(x, c, mask)``: x ``(n, #unobserved)``, c ``(n, #observed)`` (float32) and the ``(h, w)``
    bool mask, True on observed pixels; :func:`merge_quadrants` puts them back together.
  """
  images = np.asarray(images, np.float32)
  if images.ndim == 2:
    if image_shape is None:
      side = math.isqrt(images.shape[1])
      if side * side != images.shape[1]:
        raise ValueError(f"flat images of {images.shape[1]} pixels are not square: pass "
                         "image_shape=(h, w)")
      image_shape = (side, side)
    images = images.reshape(len(images), *image_shape)
  if images.ndim != 3:
    raise ValueError(f"images must be (n, h, w) or (n, h*w), got shape {images.shape}")
  mask = quadrant_mask(images.shape[1:], observed)
  return images[:, ~mask], images[:, mask], mask


def merge_quadrants(x, c, mask) -> np.ndarray:
  """The ``(n, h, w)`` images with x on the unobserved and c on the observed pixels of ``mask``."""
  x, c, mask = np.asarray(x), np.asarray(c), np.asarray(mask, bool)
  out = np.zeros((x.shape[0], *mask.shape), np.result_type(x, c, np.float32))
  out[:, ~mask] = x
  out[:, mask] = c
  return out


def digits_conditional() -> ConditionalSplits:
  """scikit-learn's binarized 8×8 digits with one-hot labels: ``Batch(x (n, 64), c (n, 10))``.

  x is exactly :func:`jvae.data.load_digits`'s split (the permutation
  ``np.random.default_rng(0).permutation(1797)``, 1,197/300/300); the labels are
  ``sklearn.datasets.load_digits().target`` under the same permutation.

  Raises:
    RuntimeError: the recomputed images do not match ``load_digits()`` (the split changed).
  """
  ds = _data.load_digits()
  digits = sklearn.datasets.load_digits()
  x = (digits.images.reshape(len(digits.images), -1) >= 8).astype(np.float32)
  perm = np.random.default_rng(0).permutation(len(x))
  cuts = np.cumsum(_data.DIGITS_SPLIT)[:-1]
  xs, ys = np.split(x[perm], cuts), np.split(digits.target[perm], cuts)
  for name, got, want in zip(("train", "valid", "test"), xs, (ds.train, ds.valid, ds.test),
                             strict=True):
    if not np.array_equal(got, want):
      raise RuntimeError(f"the labelled digits' {name} images do not match jvae.data.load_digits"
                         "(): its permutation or binarization changed")
  return ConditionalSplits(*(Batch(xi, one_hot_labels(yi, 10)) for xi, yi in zip(xs, ys,
                                                                                  strict=True)))


def mnist_quadrants(dataset="binarized_mnist", observed: Sequence[int] = (0,)) -> ConditionalSplits:
  """Quadrant completion data: ``Batch(x = unobserved pixels, c = observed quadrant(s))``.

  Args:
    dataset: a :class:`jvae.data.Dataset` with an image shape (e.g. ``jvae.data.load("mnist")``)
      or a name for :func:`jvae.data.load`.
    observed: the quadrants given as c (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right).

  Returns:
    The splits; for 28×28 MNIST with one quadrant observed, x is ``(n, 588)`` and c ``(n, 196)``.
    ``quadrant_mask(dataset.image_shape, observed)`` and :func:`merge_quadrants` rebuild images.
  """
  if isinstance(dataset, str):
    dataset = _data.load(dataset)
  if dataset.image_shape is None:
    raise ValueError(f"data set {dataset.name!r} has no image shape; quadrants need images")
  splits = []
  for split in (dataset.train, dataset.valid, dataset.test):
    x, c, _ = quadrant_split(split, observed, dataset.image_shape)
    splits.append(Batch(x, c))
  return ConditionalSplits(*splits)


# ------------------------------------------------------------------------------------------------
# Pictures.


def class_conditional_grid(model: ConditionalVAE, params, key, num_classes: int, per_class: int,
                           image_shape: Sequence[int] | None = None) -> np.ndarray:
  """Means of p(x|z, c) for z ~ p(z|c), ``per_class`` draws for each one-hot label c.

  Row-major by class: images ``k·per_class … (k+1)·per_class − 1`` are class k, so
  ``jvae.io.images.tile(grid, ncols=per_class)`` puts one class per row.

  Args:
    model: a :class:`ConditionalVAE` with ``cond_dim == num_classes``.
    params: its parameters.
    key: PRNG key for the z draws.
    num_classes: number of labels.
    per_class: images per label.
    image_shape: ``(h, w)``; default the event shape if 2-D, else the square of its size.

  Returns:
    float numpy array ``(num_classes·per_class, h, w)``, values in the likelihood's mean range
    ([0, 1] for Bernoulli).
  """
  if model.cond_dim != num_classes:
    raise ValueError(f"the model is conditioned on c of width {model.cond_dim}, not "
                     f"num_classes={num_classes} one-hot labels")
  labels = np.repeat(np.arange(num_classes), per_class)
  generate = jax.jit(lambda params, key, c: model.generate(params, key, c))
  means = np.asarray(generate(params, key, one_hot_labels(labels, num_classes)))
  if image_shape is None:
    event = means.shape[1:]
    if len(event) == 2:
      image_shape = event
    else:
      side = math.isqrt(math.prod(event))
      if side * side != math.prod(event):
        raise ValueError(f"events of shape {event} are not square images: pass image_shape")
      image_shape = (side, side)
  return means.reshape(len(labels), *image_shape)
