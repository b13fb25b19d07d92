r"""The semi-supervised M2 model of Kingma, Rezende, Mohamed & Welling (2014) (layer 3).

"Semi-supervised learning with deep generative models" (NeurIPS 2014), Sec. 3.1.2: a class label
y and a continuous latent z generate x,

.. math::
   p(y) = \mathrm{Cat}(y\,|\,1/C),\qquad p(z) = \mathcal N(z\,|\,0, I),\qquad
   p_θ(x|y, z) = \prod_i \mathrm{Bernoulli}(x_i\,|\,π_θ(y, z)_i),

with the inference model q_φ(y, z|x) = q_φ(y|x)\, q_φ(z|x, y): a categorical classifier
q_φ(y|x) = Cat(y | softmax(g_φ(x))) and a Gaussian q_φ(z|x, y) = N(μ_φ(x, y), diag σ_φ(x, y)²)
with softplus scales. The objectives that use it (the labelled bound L(x, y), the unlabelled
bound U(x) with y summed out exactly, and the classification term of Eq. 9) are in
:mod:`jvae.objectives.semi_supervised`.

The model meets :class:`jvae.LatentModel` for *labelled* data: ``batch = jvae.Batch(x, y=labels)``
with y given, the latent variable is z alone, and

* ``propose`` draws z ~ q(z|x, y),
* ``log_joint`` returns log p(x|y, z) and log p(z) + log p(y) = log N(z; 0, I) − log C,

so every bound of jvae (``jvae.elbo``, ``jvae.iwae``, ``jvae.log_marginal``, …) applies to
labelled data and bounds (estimates) log p(x, y); ``batch.mask`` is ignored there (every point is
treated as labelled by its y). ``Proposal.kl`` is the closed form of E_q[log q(z|x, y) −
log p(z) − log p(y)] = KL(q(z|x, y) ‖ N(0, I)) + log C, the KL of the whole labelled posterior
δ_y(·) q(z|x, y) from the prior p(y) p(z).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jvae.distributions.kl import analytic_kl
from jvae.distributions.likelihoods import BernoulliLikelihood
from jvae.distributions.posteriors import GaussianPosterior, standard_normal
from jvae.models.contract import Batch, Joint, Proposal
from jvae.models.networks import MLP, Decoder, Encoder
from jvae.models.vae import check_input

Array = jax.Array


class Classifier(nn.Module):
  """x ``(batch, *event)`` → flatten → ``network`` → Dense → logits ``(batch, num_classes)``.

  The logits of q(y|x) = Cat(y | softmax(logits)).

  Attributes:
    network: features of the flattened x (e.g. :class:`jvae.MLP`).
    num_classes: C, the number of classes.
  """

  network: nn.Module
  num_classes: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = self.network(x.reshape(x.shape[0], -1))
    return nn.Dense(self.num_classes, name="logits")(h)


class M2(nn.Module):
  r"""The M2 model (Kingma et al. 2014): q(y|x), q(z|x, y), p(x|y, z), p(y) = 1/C, p(z) = N(0, I).

  The networks see y as a one-hot row e_y of width C by concatenation: the encoder gets
  ``[flatten(x), e_y]`` of shape ``(batch, D + C)``, the decoder ``[z, e_y]`` of shape
  ``(..., batch, latent_dim + C)`` (e_y broadcast over the sample axis). The classifier gets x.

  Meets :class:`jvae.LatentModel` with ``batch = jvae.Batch(x, y=labels)`` (module doc): the
  bounds of jvae then bound log p(x, y). For unlabelled x, log p(x) = log Σ_y p(x, y), and the
  bound U(x) sums y out exactly (:func:`jvae.unlabelled_elbo`).

  Labels ``y`` are integers ``(batch,)`` in ``[0, num_classes)``. Out-of-range labels raise a
  ValueError where they are concrete (known at trace time); where they are traced (under
  ``jit``/``vmap``) the points with an out-of-range label get NaN log-densities (so NaN bounds),
  never a finite number for a wrong class.

  Attributes:
    classifier: linen module, x ``(batch, *event)`` → logits ``(batch, num_classes)`` (e.g.
      :class:`Classifier`).
    encoder: linen module, ``(batch, D + num_classes)`` → q(z|x, y) with batch shape
      ``(batch,)`` and event shape ``(latent_dim,)`` (e.g. :class:`jvae.Encoder` with a
      :class:`jvae.GaussianPosterior` head).
    decoder: linen module, ``(..., batch, latent_dim + num_classes)`` → p(x|y, z) with the event
      shape of x (e.g. :class:`jvae.Decoder` with a :class:`jvae.BernoulliLikelihood` head).
    num_classes: C ≥ 2.
  """

  classifier: nn.Module
  encoder: nn.Module
  decoder: nn.Module
  num_classes: int

  def __post_init__(self):
    c = self.num_classes
    if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 2:
      raise ValueError(f"M2 num_classes must be an integer >= 2, got {c!r}")
    super().__post_init__()

  def __call__(self, batch):
    """Initialisation path: logits of q(y|x), q(z|x, y=0) and p(x|y=0, z=0).

    ``batch`` is x ``(batch, *event)`` or a :class:`jvae.Batch` (y is not needed to initialise).
    Returns ``(logits, q, p_x)``.
    """
    x = self.observations(batch)
    logits = self.logits(x)
    e = jnp.zeros((x.shape[0], self.num_classes), x.dtype)
    q = self.encode(x, e)
    z = jnp.zeros((x.shape[0], *q.event_shape), x.dtype)
    return logits, q, self.decode(z, e)

  def logits(self, x: Array) -> Array:
    """The logits of q(y|x), ``(batch, num_classes)``, for x ``(batch, *event)``."""
    check_input(self, x)
    logits = self.classifier(x)
    if logits.shape != (x.shape[0], self.num_classes):
      raise ValueError(f"the classifier returned logits of shape {tuple(logits.shape)}; expected "
                       f"(batch, num_classes) = ({x.shape[0]}, {self.num_classes})")
    return logits

  def encode(self, x: Array, e: Array) -> distrax.Distribution:
    """q(z|x, y) for x ``(batch, *event)`` and one-hot (or any) rows e ``(batch, num_classes)``."""
    check_input(self, x)
    return self.encoder(jnp.concatenate([x.reshape(x.shape[0], -1), e.astype(x.dtype)], -1))

  def decode(self, z: Array, e: Array) -> distrax.Distribution:
    """p(x|y, z) for z ``(..., batch, latent_dim)`` and e ``(batch, num_classes)``."""
    e = jnp.broadcast_to(e.astype(z.dtype), (*z.shape[:-1], e.shape[-1]))
    return self.decoder(jnp.concatenate([z, e], -1))

  # -- checks at the boundary ---------------------------------------------------------------------

  @nn.nowrap
  def observations(self, batch) -> Array:
    """x of an array or :class:`jvae.Batch`, checked against the event shape (a ValueError)."""
    x = batch.x if isinstance(batch, Batch) else batch
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
      raise TypeError(f"x must be an array of shape (batch, *event), got {type(x).__name__}")
    check_input(self, x)
    return x

  @nn.nowrap
  def labelled_inputs(self, batch) -> tuple[Array, Array]:
    """``(x, y)`` of a labelled :class:`jvae.Batch`, checked at trace time.

    Raises:
      ValueError: ``batch`` is not a Batch with y; y is not ``(batch,)``; or a concrete y has a
        label outside ``[0, num_classes)``.
      TypeError: y is not an integer array.
    """
    want = "jvae.Batch(x, y=labels) with integer labels y of shape (batch,)"
    if not isinstance(batch, Batch):
      got = (f"an array of shape {tuple(batch.shape)}" if hasattr(batch, "shape")
             else type(batch).__name__)
      raise ValueError(f"M2's propose/log_joint bound log p(x, y) for labelled data: pass {want}, "
                       f"not {got} (for unlabelled x use jvae.unlabelled_elbo, which sums y out)")
    if batch.y is None:
      raise ValueError(f"M2's propose/log_joint need the labels y: the batch has y=None; pass "
                       f"{want} (for unlabelled x use jvae.unlabelled_elbo)")
    x = self.observations(batch)
    return x, check_labels(batch.y, self.num_classes, x.shape[0])

  # -- classification -----------------------------------------------------------------------------

  @nn.nowrap
  def classify(self, params, x) -> Array:
    """The logits of q(y|x), ``(batch, num_classes)``, for x ``(batch, *event)`` or a Batch."""
    x = self.observations(x)
    return self.apply(params, x, method=M2.logits)

  @nn.nowrap
  def class_log_probs(self, params, x) -> Array:
    """log q(y|x) for every class, ``(batch, num_classes)``: ``log_softmax`` of the logits."""
    return jax.nn.log_softmax(self.classify(params, x), axis=-1)

  # -- the jvae.LatentModel contract (labelled data) ----------------------------------------------

  @nn.nowrap
  def propose(self, params, key, batch, *, num_samples: int, density_params=None) -> Proposal:
    """z_k ~ q(z|x, y), ``(K, batch, latent_dim)``, with log q ``(K, batch)`` (the contract).

    y comes from ``batch.y``. With ``density_params``, z keeps its path through ``params`` and
    log q(z|x, y) is evaluated at ``density_params`` (STL). ``kl`` is KL(q(z|x, y) ‖ N(0, I)) +
    log C at ``params`` (module doc), ``(batch,)``; no per-group KL (log p(y) is in no group).
    Points with a traced out-of-range label get NaN ``log_q`` and ``kl``.
    """
    x, y = self.labelled_inputs(batch)
    e, valid = _one_hot(y, self.num_classes, x.dtype)
    q = self.apply(params, x, e, method=M2.encode)
    z, log_q = q.sample_and_log_prob(seed=key, sample_shape=(num_samples,))
    if density_params is not None:
      log_q = self.apply(density_params, x, e, method=M2.encode).log_prob(z)
    kl = analytic_kl(q, standard_normal(q.event_shape[-1], z.dtype)) + math.log(self.num_classes)
    return Proposal(z, _nan_unless(valid, log_q), kl=_nan_unless(valid, kl))

  @nn.nowrap
  def log_joint(self, params, batch, z: Array) -> Joint:
    """log p(x|y, z) and log p(z) + log p(y), each ``(K, batch)``, for z ``(K, batch, d)``."""
    x, y = self.labelled_inputs(batch)
    e, valid = _one_hot(y, self.num_classes, x.dtype)
    log_lik = self.apply(params, x, e, z, method=M2._log_lik)
    log_prior = (standard_normal(z.shape[-1], z.dtype).log_prob(z)
                 - math.log(self.num_classes))
    return Joint(_nan_unless(valid, log_lik), _nan_unless(valid, log_prior))

  def _log_lik(self, x: Array, e: Array, z: Array) -> Array:
    px = self.decode(z, e)
    if tuple(px.event_shape) != tuple(x.shape[1:]):
      raise ValueError(f"the decoder's event shape {tuple(px.event_shape)} does not match "
                       f"x of shape {tuple(x.shape)}")
    return px.log_prob(x)

  # -- generation ---------------------------------------------------------------------------------

  @nn.nowrap
  def generate(self, params, key, y, *, mean: bool = True) -> Array:
    """x ~ p(x|y, z) (or its mean) for z ~ N(0, I), one per label of y ``(n,)``: ``(n, *event)``."""
    y = check_labels(y, self.num_classes)
    e, valid = _one_hot(y, self.num_classes, jnp.float32)
    z_key, x_key = jax.random.split(key)
    z = jax.random.normal(z_key, (y.shape[0], self.latent_dim))
    px = self.apply(params, z, e, method=M2.decode)
    x = px.mean() if mean else px.sample(seed=x_key)
    return _nan_unless(valid, x, leading=True)

  @nn.nowrap
  def reconstruct(self, params, key, batch) -> Array:
    """The mean of p(x|ŷ, z) at one z ~ q(z|x, ŷ), ŷ = argmax q(y|x): ``(batch, *event)``.

    Uses the classifier's label, not ``batch.y``, so it works on unlabelled x.
    """
    x = self.observations(batch)
    y = jnp.argmax(self.classify(params, x), axis=-1)
    z = self.propose(params, key, Batch(x, y=y), num_samples=1).z[0]
    e = jax.nn.one_hot(y, self.num_classes, dtype=x.dtype)
    return self.apply(params, z, e, method=lambda m, z, e: m.decode(z, e).mean())

  @property
  def latent_dim(self) -> int:
    dim = getattr(self.encoder, "latent_dim", None)
    if dim is None:
      raise AttributeError("latent size unknown: give M2 an encoder with a `latent_dim` attribute")
    return dim

  @property
  def event_shape(self) -> tuple[int, ...] | None:
    """The shape of one x when the decoder declares it, else None."""
    shape = getattr(self.decoder, "event_shape", None)
    return None if shape is None else tuple(shape)


def check_labels(y, num_classes: int, num: int | None = None) -> Array:
  """Integer labels ``(num,)`` as int32, checked at trace time.

  A concrete y (a NumPy or un-traced JAX array) must lie in ``[0, num_classes)``; a traced one
  is not inspected (the model turns out-of-range labels into NaN).

  Raises:
    TypeError: y is not an integer array.
    ValueError: y is not 1-D with ``num`` rows, or a concrete label is out of range.
  """
  if not hasattr(y, "dtype"):
    y = np.asarray(y)
  if not jnp.issubdtype(y.dtype, jnp.integer) or jnp.issubdtype(y.dtype, jnp.bool_):
    raise TypeError(f"labels y must be an integer array of shape (batch,), got dtype {y.dtype}")
  if y.ndim != 1 or (num is not None and y.shape[0] != num):
    want = f"({num},)" if num is not None else "(n,)"
    raise ValueError(f"labels y must have shape {want} (one label per example), got "
                     f"{tuple(y.shape)}")
  if not isinstance(y, jax.core.Tracer) and y.size:
    values = np.asarray(y)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= num_classes:
      raise ValueError(f"labels y must lie in [0, {num_classes}) (num_classes={num_classes}), "
                       f"got labels in [{low}, {high}]")
  return jnp.asarray(y, jnp.int32)


def _one_hot(y: Array, num_classes: int, dtype) -> tuple[Array, Array]:
  """One-hot rows ``(batch, C)`` of y and the ``(batch,)`` mask of labels in range."""
  valid = (y >= 0) & (y < num_classes)
  return jax.nn.one_hot(y, num_classes, dtype=dtype), valid


def _nan_unless(valid: Array, a: Array, *, leading: bool = False) -> Array:
  """``a`` with NaN for the examples whose label is out of range.

  ``valid`` is ``(batch,)``; the batch axis of ``a`` is its last (``(K, batch)``, ``(batch,)``)
  or, with ``leading``, its first (``(batch, *event)``).
  """
  m = valid.reshape(valid.shape + (1,) * (a.ndim - 1)) if leading else valid
  return jnp.where(m, a, jnp.nan)


# ------------------------------------------------------------------------------------------------
# The preset.


def m2(*, event_shape: Sequence[int], num_classes: int = 10, latent_dim: int = 50,
       hidden: Sequence[int] = (500,), classifier_hidden: Sequence[int] | None = None,
       activation: Callable[[Array], Array] = nn.softplus) -> M2:
  """An MLP M2 model (Kingma et al. 2014) for binary data.

  Kingma et al. used MLPs with one hidden layer of 500 units for every network of M2 and a
  50-dimensional z on MNIST: the defaults here.

  Classifier x → ``classifier_hidden`` → logits (C); encoder ``[x, e_y]`` → ``hidden`` →
  factorized Gaussian (softplus scales); decoder ``[z, e_y]`` → reversed ``hidden`` → Bernoulli.

  Args:
    event_shape: shape of one x (e.g. ``(64,)`` digits, ``(784,)`` MNIST).
    num_classes: C, the number of classes.
    latent_dim: size of z.
    hidden: encoder hidden widths; the decoder mirrors them.
    classifier_hidden: hidden widths of q(y|x) (default: ``hidden``).
    activation: hidden non-linearity.
  """
  hidden = tuple(hidden)
  cls_hidden = hidden if classifier_hidden is None else tuple(classifier_hidden)
  classifier = Classifier(MLP(cls_hidden, activation), num_classes)
  encoder = Encoder(MLP(hidden, activation), GaussianPosterior(latent_dim))
  decoder = Decoder(MLP(tuple(reversed(hidden)), activation),
                    BernoulliLikelihood(tuple(event_shape)))
  return M2(classifier, encoder, decoder, num_classes)
