r"""The model contract: what every bound and estimator needs from a latent-variable model (layer 3).

A latent-variable model p(x, z) = p(z) p(x|z) with an approximate posterior q(z|x) meets the
contract when it has three methods (structurally: no base class, no Flax needed):

* ``init(key, batch) -> params``: a plain pytree.
* ``propose(params, key, batch, *, num_samples, density_params=None) -> Proposal``: draws
  z_k ~ q(z|batch), k = 1…K, sample axis first, and returns them with log q(z_k|batch).
  ``z`` is any pytree (one leaf per stochastic layer or site), each leaf ``(K, batch, ...)``;
  ``log_q`` is ``(K, batch)``. With ``density_params`` given, z keeps its reparameterized path
  through ``params`` while log q is evaluated at ``density_params``: the objectives pass
  ``stop_gradient(params)`` there for STL (Roeder et al. 2017) and the encoder half of DReG
  (Tucker et al. 2018), so those estimators work for every posterior a model has.
* ``log_joint(params, batch, z) -> Joint``: log p(x|z, ·) and log p(z, ·), each ``(K, batch)``,
  summed over all layers, for z shaped as ``propose`` returns it.

Everything else is optional and looked up by name:

* ``Proposal.kl`` / ``Proposal.kl_groups``: KL(q(z|batch) ‖ p(z|·)) in closed form, ``(batch,)``,
  and split into G groups (latent dimensions, or layers), ``(batch, G)``, for ``kl="analytic"``
  and free bits (Kingma et al. 2016). Return them only where that is the KL of the whole q (for
  a bottom-up hierarchy the KL of the top layer alone is not). Returned with the proposal they
  share its encoder pass; a model may instead provide methods ``analytic_kl(params, batch)``
  and ``analytic_kl_groups(params, batch)``. ``kl="analytic"`` raises a clear error on a model
  with neither.
* ``Proposal.log_q_score``: for models with discrete (non-reparameterizable) latents, the
  ``(K, batch)`` log q of those sites at live params with z stopped. A model that has such
  sites must return it: the objectives then refuse the pathwise estimators (``"reparam"``,
  ``"stl"``, ``"dreg"``), which would silently drop the score term, and take ``"score"`` or
  ``"vimco"`` (:mod:`jvae.objectives.score`).
* ``Proposal.log_q_groups`` / ``Joint.log_prior_groups``: ``(K, batch, G)`` per-group parts of
  log q and log p(z) whose sums are ``log_q`` and ``log_prior``; their difference is the sampled
  per-group KL used by free bits with ``kl="sample"``.
* ``sample_prior(params, key, batch, *, num_samples) -> z``: z ~ p(z), every leaf
  ``(K, batch, ...)`` like ``propose``'s z; AIS from the prior
  (``jvae.inference.ais_log_marginal(..., init="prior")``, :func:`jvae.inference.bdmc`).
* ``log_q(params, batch, z) -> (K, batch)``: log q(z|batch) at a given z (not drawn from q); AIS
  from the posterior (``init="posterior"``).
* ``sample_joint(params, key, num) -> (z, x)``: (z, x) ~ p(z) p(x|z), z leaves ``(1, num, ...)``
  and x ``(num, *event)``; bidirectional Monte Carlo on simulated data
  (:func:`jvae.inference.bdmc`).

``batch`` is an array x of shape ``(batch, *event)`` or a :class:`Batch` pytree carrying x and,
optionally, conditioning ``c``, labels ``y`` with a ``mask`` of labelled points, and data-set
indices ``index``. A data set is a :class:`Batch` of arrays with a leading example axis; the
trainer, ``evaluate`` and ``fit`` slice it with ``tree_map``.

Write your own model in a few lines (see ``docs/ARCHITECTURE.md``): any object with these methods
gets every objective (ELBO, IWAE, Rényi, MIWAE, CIWAE, PIWAE, ``log_marginal``), every estimator
(reparam, STL, DReG), the trainer and ``fit`` over seeds.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

Array = jax.Array
Params = Any


class Batch(NamedTuple):
  """What a model is given: data x and optional side information; a pytree.

  Attributes:
    x: ``(batch, *event)`` observations.
    c: optional conditioning (any pytree with leading axis ``batch``), e.g. an observed part of
      the image or a one-hot label for p(x|z, c).
    y: optional integer labels ``(batch,)`` (semi-supervised models).
    mask: optional ``(batch,)`` bool/float, 1 where ``y`` is observed.
    index: optional ``(batch,)`` int32 positions in the data set (local variational parameters).
  """

  x: Array
  c: Any = None
  y: Array | None = None
  mask: Array | None = None
  index: Array | None = None


class Proposal(NamedTuple):
  """Samples from q and their log-density.

  Attributes:
    z: pytree of samples, every leaf ``(K, batch, ...)``.
    log_q: ``(K, batch)`` log q(z|batch), all layers summed.
    log_q_groups: optional ``(K, batch, G)`` parts of ``log_q`` (per latent dimension or layer).
    kl: optional ``(batch,)`` closed-form KL(q ‖ p(z|·)) at ``params``, where it exists.
    kl_groups: optional ``(batch, G)`` parts of ``kl``.
    log_q_score: ``(K, batch)`` log q of the sites that are *not* reparameterized (discrete
      latents), at live ``params`` and stopped z; ``None`` when every site is reparameterized.
      Its presence is what marks a model as needing a score-function estimator
      (``estimator="score"`` or ``"vimco"``): the gradient of E_q[f(z)] is then
      E_q[∇f(z) + f(z) ∇ log q_score(z)]. In a mixed model the continuous sites keep their
      reparameterized path in ``z`` and are left out of this term.
  """

  z: Any
  log_q: Array
  log_q_groups: Array | None = None
  kl: Array | None = None
  kl_groups: Array | None = None
  log_q_score: Array | None = None


class Joint(NamedTuple):
  """The generative model's log-densities at z.

  Attributes:
    log_lik: ``(K, batch)`` log p(x|z, ·).
    log_prior: ``(K, batch)`` log p(z, ·), all layers summed.
    log_prior_groups: optional ``(K, batch, G)`` parts of ``log_prior``, matching
      ``Proposal.log_q_groups``.
  """

  log_lik: Array
  log_prior: Array
  log_prior_groups: Array | None = None


@runtime_checkable
class LatentModel(Protocol):
  """The structural contract every jvae bound and estimator is written against (module doc)."""

  def init(self, key, batch) -> Params:
    """Parameters for a model that will see batches shaped like ``batch``."""

  def propose(self, params: Params, key, batch, *, num_samples: int,
              density_params: Params | None = None) -> Proposal:
    """z ~ q(z|batch), sample axis first, with log q at ``density_params`` (default params)."""

  def log_joint(self, params: Params, batch, z) -> Joint:
    """log p(x|z, ·) and log p(z, ·), each ``(K, batch)``."""


def as_batch(batch) -> Batch:
  """``batch`` as a :class:`Batch`: an array becomes ``Batch(x)``; a Batch is returned as is."""
  if isinstance(batch, Batch):
    return batch
  if hasattr(batch, "shape") and hasattr(batch, "dtype"):
    return Batch(batch)
  try:
    return Batch(jnp.asarray(batch))
  except TypeError:
    raise TypeError("batch must be an array x of shape (batch, *event) or a jvae.Batch, got "
                    f"{type(batch).__name__}") from None


def data_of(batch) -> Array:
  """The observations x of an array or :class:`Batch`."""
  return batch.x if isinstance(batch, Batch) else batch


def num_examples(batch) -> int:
  """The (static) leading size of ``batch``'s x."""
  return int(data_of(batch).shape[0])


def check_batch(batch) -> Batch:
  """:func:`as_batch` plus the checks common to every objective, at trace time.

  Raises:
    TypeError: x is not a floating-point array.
    ValueError: x has no example axis or an empty one, or a side field's leading size differs.
  """
  b = as_batch(batch)
  x = b.x
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"x must be a floating-point array, got dtype {x.dtype}")
  if x.ndim < 2:
    raise ValueError(f"x must have shape (batch, *event), got {tuple(x.shape)}")
  n = x.shape[0]
  if n == 0:
    raise ValueError(f"the batch is empty: x has shape {tuple(x.shape)}; expected at least one "
                     "example")
  for name in ("c", "y", "mask", "index"):
    for leaf in jax.tree_util.tree_leaves(getattr(b, name)):
      if getattr(leaf, "ndim", 0) < 1 or leaf.shape[0] != n:
        raise ValueError(f"batch.{name} must have leading axis {n} like x "
                         f"{tuple(x.shape)}, got shape {tuple(getattr(leaf, 'shape', ()))}")
  return b


def check_model(model) -> None:
  """Raise a TypeError naming what is missing unless ``model`` meets :class:`LatentModel`."""
  missing = [m for m in ("init", "propose", "log_joint") if not callable(getattr(model, m, None))]
  if missing:
    raise TypeError(
        f"model must meet the jvae.LatentModel contract (methods init, propose, log_joint); "
        f"{type(model).__name__} has no {', '.join(missing)}")
