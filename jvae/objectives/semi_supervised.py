r"""Semi-supervised objectives: labelled and unlabelled bounds of M2 (Kingma et al. 2014) (layer 4).

For a model with a class label y and a latent z (:class:`jvae.M2`), "Semi-supervised learning
with deep generative models" (Kingma, Rezende, Mohamed & Welling, NeurIPS 2014) bounds

* a labelled point (Eq. 6): log p(x, y) ≥ L(x, y) = E_{q(z|x,y)}[log p(x|y, z) + log p(y) +
  log p(z) − log q(z|x, y)];
* an unlabelled point (Eq. 7): log p(x) ≥ U(x) = Σ_y q(y|x) L(x, y) + H(q(y|x)), the sum over the
  C classes done exactly (enumerated, not sampled, so no score-function gradient is needed);

and trains on J^α = Σ_labelled L + Σ_unlabelled U + α E_labelled[log q(y|x)] (Eq. 9, here
signed as a bound to maximise), so that the classifier q(y|x) also learns from the labels.

In this module L and U are *lower bounds* (higher is better), the negatives of the paper's
L and U. Every function returns ``f(params, key, batch, *, beta=1.0) -> Array[batch]`` like the
other objectives of jvae (``jax.jit``, ``jax.vmap``, ``jax.grad`` apply); ``beta`` weights the
prior/posterior part for KL warm-up: L_β = E_q[log p(x|y, z)] − β (KL(q(z|x, y) ‖ p(z)) −
log p(y)) and U_β = Σ_y q(y|x) L_β(x, y) + β H(q(y|x)), i.e. U_β = E_{q(y,z|x)}[log p(x|y, z)] −
β KL(q(y, z|x) ‖ p(y) p(z)); β = 1 is the bound.

A model used here needs, besides the :class:`jvae.LatentModel` contract on labelled batches
``jvae.Batch(x, y=labels)``, ``num_classes`` and ``class_log_probs(params, x) -> (batch, C)``.

Estimates: for each class, L(x, c) uses the same ``num_samples`` noise draws (the same key for
every class: common random numbers, each L(x, c) still unbiased), so the enumerated U(x) of this
module equals the brute-force Python sum Σ_c q(c|x) L(x, c) + H computed with that key.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jvae.models.contract import Batch, check_batch, check_model
from jvae.objectives.log_marginal import log_marginal
from jvae.objectives.log_weights import (
    check_beta,
    check_estimator,
    check_key,
    check_num_samples,
    tree_stop,
)

Array = jax.Array
Objective = Callable[..., Array]

KL_OPTIONS = ("analytic", "sample")
ESTIMATORS = ("reparam", "stl")
PAPER_ALPHA_SCALE = 0.1  # Kingma et al. (2014) use α = 0.1·N in their experiments


def kingma_alpha(*, num_examples: int, num_labels: int, scale: float = PAPER_ALPHA_SCALE) -> float:
  r"""The per-labelled-point ``alpha`` of :func:`semi_supervised_elbo` for the paper's α = scale·N.

  Kingma et al. (2014) weight the classification term of J^α = Σ_l L + Σ_u U + α E_l[log q(y|x)]
  (Eq. 9, a sum over the N training points plus α times a *mean* over the N_l labelled ones) with
  α = 0.1·N. :func:`semi_supervised_elbo` adds ``alpha``·log q(y|x) to the value of each labelled
  point, and the trainer averages values over (uniformly drawn) batches, so its expected loss is
  J^α / N exactly when ``alpha`` = α / N_l = scale · N / N_l (1.197 for 100 labels of digits'
  1,197 training images, 50 for 100 labels of MNIST's 50,000).

  Args:
    num_examples: N, the training points (labelled and unlabelled).
    num_labels: N_l ≥ 1, the labelled ones among them.
    scale: α / N (0.1 in the paper).
  """
  for name, value in (("num_examples", num_examples), ("num_labels", num_labels)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
  if num_labels > num_examples:
    raise ValueError(f"num_labels ({num_labels}) must be at most num_examples ({num_examples})")
  _check_weight(scale, "scale")
  return float(scale) * num_examples / num_labels


def _check_weight(value, name: str) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
    raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
  if not (value >= 0 and math.isfinite(value)):
    raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_semi_supervised_model(model) -> int:
  check_model(model)
  c = getattr(model, "num_classes", None)
  has_probs = callable(getattr(model, "class_log_probs", None))
  has_classes = isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 2
  if not (has_probs and has_classes):
    lacks = [name for name, ok in (("an integer num_classes >= 2", has_classes),
                                   ("class_log_probs(params, x)", has_probs)) if not ok]
    raise TypeError(f"a semi-supervised objective needs a model with num_classes and "
                    f"class_log_probs(params, x) (e.g. jvae.M2); {type(model).__name__} lacks "
                    + " and ".join(lacks))
  return int(c)


def _check_options(num_samples, kl, estimator) -> None:
  check_num_samples(num_samples)
  check_estimator(estimator, ESTIMATORS)
  if kl not in KL_OPTIONS:
    raise ValueError(f"unknown kl option {kl!r}; expected one of {KL_OPTIONS}")
  if estimator == "stl" and kl == "analytic":
    raise ValueError("estimator='stl' drops the score term of log q(z|x, y), which needs "
                     "kl='sample'; the analytic KL has no such term")


def _prepare(key, batch, beta) -> Batch:
  check_key(key)
  if not hasattr(batch, "shape") and not hasattr(batch, "_fields"):
    batch = jnp.asarray(batch)
  b = check_batch(batch)
  check_beta(beta)
  return b


def labelled_bounds(model, params, key, x: Array, *, num_samples: int = 1, kl: str = "analytic",
                    estimator: str = "reparam", beta=1.0) -> Array:
  r"""L_β(x, c) for every class c at once, ``(batch, C)``: the labelled bound with y = c.

  One ``jax.vmap`` over the C classes of the model's ``propose``/``log_joint`` on
  ``Batch(x, y=c)``, all with the same ``key`` (the same noise for every class).

  Args:
    model: a model with the contract on labelled batches, ``num_classes`` and
      ``class_log_probs`` (e.g. :class:`jvae.M2`).
    params: its parameters.
    key: PRNG key.
    x: ``(batch, *event)`` observations.
    num_samples: K samples of z averaged for each L(x, c).
    kl: ``"analytic"`` (the proposal's closed-form KL) or ``"sample"``.
    estimator: ``"reparam"`` or ``"stl"`` (log q at stopped params; needs ``kl="sample"``).
    beta: the KL weight β.
  """
  c = model.num_classes
  n = x.shape[0]
  density = tree_stop(params) if estimator == "stl" else None

  def one(label):
    b = Batch(x, y=jnp.full((n,), label, jnp.int32))
    proposal = model.propose(params, key, b, num_samples=num_samples, density_params=density)
    joint = model.log_joint(params, b, proposal.z)
    if kl == "analytic":
      if proposal.kl is None:
        raise ValueError(f"kl='analytic' needs the closed-form KL, which {type(model).__name__} "
                         "does not return with its proposal; use kl='sample'")
      return jnp.mean(joint.log_lik, axis=0) - beta * proposal.kl
    return jnp.mean(joint.log_lik + beta * (joint.log_prior - proposal.log_q), axis=0)

  return jax.vmap(one, out_axes=1)(jnp.arange(c))


def _enumerated(log_py: Array, table: Array, beta) -> Array:
  """U_β = Σ_c q(c|x) L_β(x, c) + β H(q(y|x)) from ``(batch, C)`` log q(y|x) and L_β."""
  q = jnp.exp(log_py)
  entropy = -jnp.sum(q * log_py, axis=-1)
  return jnp.sum(q * table, axis=-1) + beta * entropy


def unlabelled_elbo(model, *, num_samples: int = 1, kl: str = "analytic",
                    estimator: str = "reparam") -> Objective:
  r"""U(x) = Σ_y q(y|x) L(x, y) + H(q(y|x)) ≤ log p(x), y summed out exactly (Kingma et al. Eq. 7).

  The bound of an unlabelled point, for every point of the batch: ``batch.y`` and
  ``batch.mask`` are ignored, so ``batch`` may be a plain x. It is the test bound of M2 (and its
  validation bound for early stopping). Cost: C labelled bounds per point.

  Args:
    model: e.g. :class:`jvae.M2`.
    num_samples: K samples of z per class.
    kl: ``"analytic"`` or ``"sample"`` (for each L(x, y)).
    estimator: ``"reparam"`` or ``"stl"`` (needs ``kl="sample"``).

  Returns:
    ``f(params, key, batch, *, beta=1.0) -> Array[batch]``.
  """
  _check_semi_supervised_model(model)
  _check_options(num_samples, kl, estimator)

  def objective(params, key, batch, *, beta=1.0):
    b = _prepare(key, batch, beta)
    log_py = model.class_log_probs(params, b.x)
    table = labelled_bounds(model, params, key, b.x, num_samples=num_samples, kl=kl,
                            estimator=estimator, beta=beta)
    return _enumerated(log_py, table, beta)

  return objective


def semi_supervised_elbo(model, *, alpha: float, num_samples: int = 1, kl: str = "analytic",
                         estimator: str = "reparam") -> Objective:
  r"""The M2 training objective of Kingma et al. (2014), Eq. 9, per data point.

  For ``batch = jvae.Batch(x, y, mask)``, mask 1 (True) where y is observed, point i gets

  * labelled (mask_i = 1): L_β(x_i, y_i) + ``alpha`` · log q(y_i|x_i),
  * unlabelled (mask_i = 0): U_β(x_i) = Σ_y q(y|x_i) L_β(x_i, y) + β H(q(y|x_i)), y enumerated,

  both from one table of L_β(x_i, c) for every class c (:func:`labelled_bounds`), so a batch with
  mask all 1 gives exactly the labelled values and all 0 the values of :func:`unlabelled_elbo`.
  y at unlabelled points is never read (any integer, e.g. −1, and no gradient flows from it).

  Weighting: each point counts once, labelled or not (labelled points are not up-weighted), and
  the trainer averages the values over a batch drawn uniformly from the whole training set. So the
  expected loss is (1/N)[Σ_l −L − ``alpha`` Σ_l log q(y|x) + Σ_u −U]: the paper's J^α / N with
  α = ``alpha`` · N_l (α weighs the *mean* log q over the N_l labelled points in Eq. 9). The
  paper's α = 0.1·N is ``alpha`` = 0.1·N/N_l: :func:`kingma_alpha`. With ``alpha=0`` the value is
  the bound J alone (L on labelled, U on unlabelled points), no classification term.

  Bad input: a batch without y or mask, a y that is not integer ``(batch,)``, or a mask that is not
  ``(batch,)`` bool/0-1 raise at trace time, and so does a concrete out-of-range label at a
  labelled point; a traced one makes that point's value NaN (the trainer then skips the step).

  Args:
    model: e.g. :class:`jvae.M2`.
    alpha: the weight ≥ 0 of log q(y|x) at each labelled point (see above; no default, as it
      depends on N and N_l: use :func:`kingma_alpha`).
    num_samples: K samples of z per class.
    kl: ``"analytic"`` (closed-form KL of q(z|x, y)) or ``"sample"``.
    estimator: ``"reparam"`` or ``"stl"`` (needs ``kl="sample"``).

  Returns:
    ``f(params, key, batch, *, beta=1.0) -> Array[batch]``.
  """
  c = _check_semi_supervised_model(model)
  _check_options(num_samples, kl, estimator)
  _check_weight(alpha, "alpha (the weight of log q(y|x))")

  def objective(params, key, batch, *, beta=1.0):
    b = _prepare(key, batch, beta)
    y, labelled = _labels_and_mask(b, c)
    log_py = model.class_log_probs(params, b.x)
    table = labelled_bounds(model, params, key, b.x, num_samples=num_samples, kl=kl,
                            estimator=estimator, beta=beta)
    unlabelled = _enumerated(log_py, table, beta)
    valid = (y >= 0) & (y < c)
    idx = jnp.clip(y, 0, c - 1)[:, None]
    at_y = (jnp.take_along_axis(table, idx, axis=1)[:, 0]
            + alpha * jnp.take_along_axis(log_py, idx, axis=1)[:, 0])
    at_y = jnp.where(valid, at_y, jnp.nan)
    return jnp.where(labelled, at_y, unlabelled)

  return objective


def _labels_and_mask(b: Batch, num_classes: int) -> tuple[Array, Array]:
  """``(y int32, labelled bool)`` of a semi-supervised batch, checked at trace time."""
  want = "jvae.Batch(x, y=labels, mask=1 where labelled)"
  if not isinstance(b, Batch) or b.y is None or b.mask is None:
    missing = "a plain array x" if not isinstance(b, Batch) else " and ".join(
        name for name in ("y", "mask") if getattr(b, name) is None) + " = None"
    raise ValueError(f"semi_supervised_elbo needs labels and a mask: pass {want}, got {missing} "
                     "(for unlabelled data alone use jvae.unlabelled_elbo)")
  n = b.x.shape[0]
  y, mask = b.y, b.mask
  if not hasattr(y, "dtype"):
    y = np.asarray(y)
  if not jnp.issubdtype(y.dtype, jnp.integer) or y.dtype == jnp.bool_:
    raise TypeError(f"labels y must be an integer array of shape ({n},), got dtype {y.dtype}")
  if y.shape != (n,):
    raise ValueError(f"labels y must have shape ({n},) like x {tuple(b.x.shape)}, got "
                     f"{tuple(y.shape)}")
  if not hasattr(mask, "dtype"):
    mask = np.asarray(mask)
  if mask.shape != (n,):
    raise ValueError(f"mask must have shape ({n},) like x {tuple(b.x.shape)}, got "
                     f"{tuple(mask.shape)}")
  if not (mask.dtype == jnp.bool_ or jnp.issubdtype(mask.dtype, jnp.number)):
    raise TypeError(f"mask must be bool or 0/1 numbers, got dtype {mask.dtype}")
  if not isinstance(mask, jax.core.Tracer):
    m = np.asarray(mask)
    if m.dtype != np.bool_ and not np.all((m == 0) | (m == 1)):
      raise ValueError(f"mask must hold only 0 and 1 (or be bool), got values "
                       f"{np.unique(m)[:5].tolist()}")
    if not isinstance(y, jax.core.Tracer) and np.any(m != 0):
      at = np.asarray(y)[m != 0]
      if at.min() < 0 or at.max() >= num_classes:
        raise ValueError(f"labels y must lie in [0, {num_classes}) at the labelled points "
                         f"(mask 1), got labels in [{int(at.min())}, {int(at.max())}]")
  return jnp.asarray(y, jnp.int32), jnp.asarray(mask) != 0


def classification_error(model) -> Objective:
  r"""1 where argmax_y q(y|x) ≠ y, else 0, per point: ``f(params, key, batch) -> Array[batch]``.

  A metric for ``jvae.evaluate`` (whose mean is the error rate). Every point's ``batch.y`` is
  used, ``batch.mask`` ignored; ``key`` and ``beta`` are unused. A concrete out-of-range label
  raises; a traced one gives NaN.
  """
  c = _check_semi_supervised_model(model)

  def metric(params, key, batch, *, beta=1.0):
    b = _prepare(key, batch, beta)
    if not isinstance(b, Batch) or b.y is None:
      raise ValueError("classification_error needs labels: pass jvae.Batch(x, y=labels)")
    n = b.x.shape[0]
    y, _ = _labels_and_mask(b._replace(mask=np.ones((n,), bool)), c)
    wrong = (jnp.argmax(model.class_log_probs(params, b.x), axis=-1) != y).astype(jnp.float32)
    return jnp.where((y >= 0) & (y < c), wrong, jnp.nan)

  return metric


def unlabelled_log_marginal(model, *, num_samples: int = 5000, chunk_size: int = 250,
                            return_stderr: bool = False) -> Objective:
  r"""Importance-sampled log p(x) = log Σ_y p(x, y) of a model with a class label y.

  log p̂(x) = logsumexp_y log p̂(x, y), each log p̂(x, y) the :func:`jvae.log_marginal` estimate
  with K samples of q(z|x, y) (the same key for every class). It is the importance-sampling
  estimate with proposal q(y|x) q(z|x, y) and y enumerated (q(y|x) cancels), a stochastic lower
  bound of log p(x) that is consistent as K → ∞. Cost: C·K samples per point.

  The standard error (``return_stderr``) is the delta-method error of p̂(x) = Σ_y p̂(x, y):
  sqrt(Σ_y w_y² se_y²), w_y = p̂(x, y) / p̂(x), from each class's se_y.

  Returns:
    ``f(params, key, batch) -> Array[batch]``, or a ``(value, stderr)`` pair.
  """
  c = _check_semi_supervised_model(model)
  per_class = log_marginal(model, num_samples=num_samples, chunk_size=chunk_size,
                           return_stderr=True)

  def objective(params, key, batch, *, beta=1.0):
    b = _prepare(key, batch, beta)
    n = b.x.shape[0]

    def one(label):
      return per_class(params, key, Batch(b.x, y=jnp.full((n,), label, jnp.int32)), beta=beta)

    values, stderrs = jax.vmap(one, out_axes=1)(jnp.arange(c))
    value = jax.nn.logsumexp(values, axis=-1)
    if not return_stderr:
      return value
    w = jax.nn.softmax(values, axis=-1)
    return value, jnp.sqrt(jnp.sum(jnp.square(w * stderrs), axis=-1))

  return objective
