r"""Labelled data sets for semi-supervised models: a few labels among many images (layer 6).

The data of :class:`jvae.M2` (Kingma et al. 2014) is a :class:`jvae.Batch` ``(x, y, mask)`` of
arrays with a leading example axis: x the images, y the integer labels, mask True where the label
may be used in training. :func:`semi_supervised_split` marks ``num_labels`` training points as
labelled (balanced over classes, as in the paper's 100-label MNIST experiments: 10 per class);
:func:`digits_semi_supervised` does so on scikit-learn's digits, in the exact split of
:func:`jvae.data.load_digits`.

Only digits carries labels in jvae: the binarized MNIST of Larochelle & Murray (the ``.amat``
files :func:`jvae.data.load_binarized_mnist` reads) has none, so there is no labelled MNIST here.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jvae.io import conditional_data as _cdata
from jvae.models.contract import Batch

DIGITS_CLASSES = 10


class LabelledSplits(NamedTuple):
  """Train/valid/test :class:`jvae.Batch` data sets ``Batch(x, y, mask)`` of numpy arrays.

  x is float32 ``(n, *event)``, y int32 ``(n,)`` and mask bool ``(n,)``. In ``train`` the mask
  marks the labelled points; in ``valid`` and ``test`` it is all True (their labels are only ever
  used to score the classifier: a semi-supervised model is validated and tested on the unlabelled
  bound U(x)).
  """

  train: Batch
  valid: Batch
  test: Batch
  num_classes: int

  @property
  def event_shape(self) -> tuple[int, ...]:
    """The shape of one x."""
    return tuple(self.train.x.shape[1:])

  @property
  def num_labels(self) -> int:
    """The number of labelled training points."""
    return int(np.sum(self.train.mask))


def digits_labelled() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
  """scikit-learn's binarized 8×8 digits with their integer labels: ``((x, y),) * 3`` splits.

  x is exactly :func:`jvae.data.load_digits`'s train/valid/test (1,197/300/300, the permutation
  ``np.random.default_rng(0).permutation(1797)``), float32 ``(n, 64)``; y the int32 labels
  ``(n,)`` in [0, 10) under the same permutation (checked against the images, via
  :func:`jvae.io.conditional_data.digits_conditional`).
  """
  splits = _cdata.digits_conditional()
  return tuple((b.x, np.argmax(b.c, axis=1).astype(np.int32)) for b in splits)


def semi_supervised_split(x, y, *, num_labels: int, seed: int = 0, balanced: bool = True,
                          num_classes: int | None = None) -> Batch:
  """Mark ``num_labels`` points of ``(x, y)`` as labelled: a ``Batch(x, y, mask)`` data set.

  Args:
    x: ``(n, *event)`` examples.
    y: ``(n,)`` integer labels in ``[0, num_classes)`` (all of them: the unlabelled points keep
      theirs, which the semi-supervised objective never reads, for scoring the classifier).
    num_labels: how many points to label, 1 ≤ num_labels ≤ n.
    seed: the NumPy seed of the choice.
    balanced: choose ``num_labels // C`` points of every class (and one more from each of
      ``num_labels % C`` classes drawn at random), as Kingma et al. (2014) do; else a uniform
      random subset.
    num_classes: C (default ``max(y) + 1``).

  Returns:
    ``Batch(x float32, y int32, mask bool)``, mask True at the ``num_labels`` chosen points.

  Raises:
    ValueError: shapes or labels do not fit, ``num_labels`` is out of range, or (balanced) a
      class has fewer points than it must give.
  """
  x = np.asarray(x, np.float32)
  y = np.asarray(y)
  if x.ndim < 2:
    raise ValueError(f"x must have shape (n, *event), got {x.shape}")
  n = x.shape[0]
  if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"y must be ({n},) integer labels like x {x.shape}, got {y.dtype} {y.shape}")
  if num_classes is None:
    num_classes = int(y.max()) + 1 if n else 0
  if n and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]")
  if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)):
    raise ValueError(f"num_labels must be an integer, got {num_labels!r}")
  if not 1 <= num_labels <= n:
    raise ValueError(f"num_labels must be in [1, {n}] (a semi-supervised data set needs at "
                     f"least one labelled point, and has {n} points), got {num_labels}")
  rng = np.random.default_rng(seed)
  if balanced:
    per_class = np.full(num_classes, num_labels // num_classes)
    per_class[rng.choice(num_classes, num_labels % num_classes, replace=False)] += 1
    chosen = []
    for c in range(num_classes):
      members = np.flatnonzero(y == c)
      if len(members) < per_class[c]:
        raise ValueError(f"balanced={balanced}: class {c} has {len(members)} points, fewer than "
                         f"the {per_class[c]} of {num_labels} labels it must give; give fewer "
                         "labels or balanced=False")
      chosen.append(rng.choice(members, per_class[c], replace=False))
    chosen = np.concatenate(chosen)
  else:
    chosen = rng.choice(n, num_labels, replace=False)
  mask = np.zeros(n, bool)
  mask[chosen] = True
  return Batch(x, y=y.astype(np.int32), mask=mask)


def labelled_semi_supervised(ds, *, num_labels: int, seed: int = 0,
                             balanced: bool = True) -> LabelledSplits:
  """A labelled :class:`jvae.io.data.Dataset` with ``num_labels`` labelled training points.

  Train is ``Batch(x, y, mask)`` (:func:`semi_supervised_split`); valid and test have mask all
  True. For a dynamically binarized data set x keeps its grey levels (the trainer draws them).

  Raises:
    ValueError: the data set has no labels.
  """
  if ds.labels is None:
    raise ValueError(f"the data set {ds.name!r} has no class labels")
  (yt, yv, ys) = (np.asarray(y, np.int32) for y in ds.labels)
  classes = int(max(yt.max(), yv.max(), ys.max())) + 1
  train = semi_supervised_split(ds.train, yt, num_labels=num_labels, seed=seed,
                                balanced=balanced, num_classes=classes)
  return LabelledSplits(train, _all_labelled(ds.valid, yv), _all_labelled(ds.test, ys), classes)


def digits_semi_supervised(*, num_labels: int, seed: int = 0,
                           balanced: bool = True) -> LabelledSplits:
  """Digits with ``num_labels`` labelled training points (:func:`semi_supervised_split`).

  Train is ``Batch(x, y, mask)`` of the 1,197 training images; valid and test (300 each) have
  mask all True. See :func:`digits_labelled` for the split.
  """
  (xt, yt), (xv, yv), (xs, ys) = digits_labelled()
  train = semi_supervised_split(xt, yt, num_labels=num_labels, seed=seed, balanced=balanced,
                                num_classes=DIGITS_CLASSES)
  return LabelledSplits(train, _all_labelled(xv, yv), _all_labelled(xs, ys), DIGITS_CLASSES)


def _all_labelled(x, y) -> Batch:
  return Batch(np.asarray(x, np.float32), y=np.asarray(y, np.int32),
               mask=np.ones(len(y), bool))
