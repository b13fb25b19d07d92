r"""The conditional VAE of Sohn, Lee & Yan (2015), its preset and its two data sets (layer 3).

"Learning Structured Output Representation using Deep Conditional Generative Models" (NeurIPS
2015): given side information c, the model is

.. math::
   p_θ(x, z|c) = p_θ(z|c)\, p_θ(x|z, c),\qquad q_φ(z|x, c),

and the conditional ELBO, log p(x|c) ≥ E_q[log p(x|z, c)] − KL(q(z|x, c) ‖ p(z|c)), and every
other bound of jvae follow from the :class:`jvae.LatentModel` contract with ``batch`` a
``jvae.Batch(x, c)``, c of shape ``(batch, cond_dim)``. The prior network p(z|c) is a learned
diagonal Gaussian (:class:`jvae.ConditionalGaussianPrior`), so the KL has a closed form.

Its two demonstration data sets (MNIST quadrant completion, class-conditional digits) and the
class-conditional picture live in :mod:`jvae.io.conditional_data` (layer 6).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jvae.distributions.kl import analytic_kl, kl_per_dim
from jvae.distributions.likelihoods import BernoulliLikelihood, GaussianLikelihood
from jvae.distributions.posteriors import GaussianPosterior
from jvae.models.contract import Batch, Joint, Proposal
from jvae.models.networks import MLP, Decoder, Encoder
from jvae.models.priors import ConditionalGaussianPrior
from jvae.models.vae import check_input

Array = jax.Array


class ConditionalVAE(nn.Module):
  r"""A conditional VAE: q(z|x, c), p(z|c) and p(x|z, c) (Sohn et al. 2015).

  The networks see c by concatenation: the encoder gets ``[flatten(x), c]`` of shape
  ``(batch, D + cond_dim)``, the decoder ``[z, c]`` of shape ``(..., batch, latent_dim +
  cond_dim)`` (c broadcast over the sample axis), and the prior network c itself. So
  :class:`jvae.Encoder` / :class:`jvae.Decoder` MLPs work unchanged, and with c = 0 a CVAE is an
  unconditional VAE whose first Dense kernels have ``cond_dim`` extra (unused) rows.

  Meets :class:`jvae.LatentModel` with ``batch = jvae.Batch(x, c)``: ``init``, ``propose``,
  ``log_joint``, and the closed-form KL(q(z|x, c) ‖ p(z|c)) (via :func:`jvae.analytic_kl`) as
  ``Proposal.kl`` and, per latent dimension when both are diagonal Gaussians,
  ``Proposal.kl_groups``; the methods ``analytic_kl`` and ``analytic_kl_groups`` give the same.
  ``Proposal.log_q_groups`` and ``Joint.log_prior_groups`` are the per-dimension log-densities
  for diagonal Gaussians (free bits with ``kl="sample"``).

  Attributes:
    encoder: linen module, ``(batch, D + cond_dim)`` → q(z|x, c) with batch shape ``(batch,)``
      and event shape ``(latent_dim,)``.
    decoder: linen module, ``(..., batch, latent_dim + cond_dim)`` → p(x|z, c) with event shape
      that of x.
    prior: p(z|c): a linen module called as ``prior(c)`` (e.g.
      :class:`jvae.ConditionalGaussianPrior`; the unconditional :class:`jvae.LearnedGaussianPrior`
      and :class:`jvae.MixturePrior` ignore c), or a fixed distrax distribution over z.
    cond_dim: width of c; every batch's c must be ``(batch, cond_dim)``.
  """

  encoder: nn.Module
  decoder: nn.Module
  prior: nn.Module | distrax.Distribution
  cond_dim: int

  def __call__(self, batch):
    """Initialisation path: q(z|x, c), p(z|c) and p(x|z=0, c). Returns ``(q, p_x_given_zc)``."""
    x, c = self.inputs(batch)
    q = self.encode(x, c)
    self.prior_distribution(c)
    z = jnp.zeros((x.shape[0], *q.event_shape), x.dtype)
    return q, self.decode(z, c)

  def encode(self, x: Array, c: Array) -> distrax.Distribution:
    """q(z|x, c) for x ``(batch, *event)`` and c ``(batch, cond_dim)``."""
    check_input(self, x)
    return self.encoder(jnp.concatenate([x.reshape(x.shape[0], -1), c.astype(x.dtype)], -1))

  def decode(self, z: Array, c: Array) -> distrax.Distribution:
    """p(x|z, c) for z ``(..., batch, latent_dim)`` and c ``(batch, cond_dim)``."""
    c = jnp.broadcast_to(c.astype(z.dtype), (*z.shape[:-1], c.shape[-1]))
    return self.decoder(jnp.concatenate([z, c], -1))

  def prior_distribution(self, c: Array) -> distrax.Distribution:
    """p(z|c) for c ``(batch, cond_dim)``; a learned prior is only available inside ``apply``."""
    if isinstance(self.prior, nn.Module):
      return self.prior(c)
    return self.prior

  @nn.nowrap
  def inputs(self, batch) -> tuple[Array, Array]:
    """``(x, c)`` of a :class:`jvae.Batch`, checked at trace time; c in x's float dtype.

    Raises:
      ValueError: ``batch`` is not a Batch with c, or c is not ``(batch, cond_dim)``.
    """
    want = f"jvae.Batch(x, c) with c of shape (batch, {self.cond_dim})"
    if not isinstance(batch, Batch):
      got = (f"an array of shape {tuple(batch.shape)}" if hasattr(batch, "shape")
             else type(batch).__name__)
      raise ValueError(f"{type(self).__name__} is conditioned on c: pass {want}, not {got}")
    if batch.c is None:
      raise ValueError(f"{type(self).__name__} is conditioned on c, but the batch has c=None: "
                       f"pass {want}")
    x = batch.x
    if not hasattr(x, "shape") or not hasattr(x, "dtype") or x.ndim < 1:
      raise ValueError(f"x must be an array of shape (batch, *event), got {type(x).__name__}")
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    return x, self.check_c(batch.c, x.shape[0], dtype)

  @nn.nowrap
  def check_c(self, c, num: int | None = None, dtype=jnp.float32) -> Array:
    """c as an array of ``dtype`` after checking it is ``(num, cond_dim)``; else a ValueError."""
    c = c if hasattr(c, "ndim") and hasattr(c, "astype") else jnp.asarray(c)
    if c.ndim != 2 or c.shape[-1] != self.cond_dim:
      raise ValueError(f"c must have shape (batch, {self.cond_dim}) (cond_dim={self.cond_dim}), "
                       f"got {tuple(c.shape)}")
    if num is not None and c.shape[0] != num:
      raise ValueError(f"c has {c.shape[0]} rows but x has {num}: c must have shape "
                       f"({num}, {self.cond_dim})")
    return c.astype(dtype)

  # -- the jvae.LatentModel contract ------------------------------------------------------------

  @nn.nowrap
  def propose(self, params, key, batch, *, num_samples: int, density_params=None) -> Proposal:
    """z_k ~ q(z|x, c), ``(K, batch, latent_dim)``, with log q ``(K, batch)`` (the contract).

    With ``density_params``, z keeps its path through ``params`` and log q(z|x, c) is evaluated
    at ``density_params`` (STL, DReG). ``kl`` / ``kl_groups`` are KL(q(z|x, c) ‖ p(z|c)) at
    ``params`` in closed form, total and per dimension, from the same encoder pass (None where
    the pair has none, e.g. a mixture prior).
    """
    x, c = self.inputs(batch)
    q, kl, kl_groups = self.apply(params, x, c, method=ConditionalVAE._encode_with_kl)
    z, log_q = q.sample_and_log_prob(seed=key, sample_shape=(num_samples,))
    if density_params is not None:
      q = self.apply(density_params, x, c, method=ConditionalVAE.encode)
      log_q = q.log_prob(z)
    return Proposal(z, log_q, _diag_log_prob(q, z), kl, kl_groups)

  def _encode_with_kl(self, x: Array, c: Array):
    q = self.encode(x, c)
    prior = self.prior_distribution(c)
    try:
      kl = jnp.broadcast_to(analytic_kl(q, prior), (x.shape[0],))
    except ValueError:  # no closed form for this pair
      return q, None, None
    both_diag = all(isinstance(d, distrax.MultivariateNormalDiag) for d in (q, prior))
    return q, kl, kl_per_dim(q, prior) if both_diag else None

  @nn.nowrap
  def log_joint(self, params, batch, z: Array) -> Joint:
    """log p(x|z, c) and log p(z|c), each ``(K, batch)``, for z ``(K, batch, latent_dim)``."""
    x, c = self.inputs(batch)
    return Joint(*self.apply(params, x, c, z, method=ConditionalVAE._log_joint))

  def _log_joint(self, x: Array, c: Array, z: Array):
    px = self.decode(z, c)
    if tuple(px.event_shape) != tuple(x.shape[1:]):
      raise ValueError(f"the decoder's event shape {tuple(px.event_shape)} does not match "
                       f"x of shape {tuple(x.shape)}")
    prior = self.prior_distribution(c)
    return px.log_prob(x), prior.log_prob(z), _diag_log_prob(prior, z)

  @nn.nowrap
  def analytic_kl(self, params, batch) -> Array:
    """KL(q(z|x, c) ‖ p(z|c)) in closed form, ``(batch,)``; a ValueError when the pair has none."""
    x, c = self.inputs(batch)
    return self.apply(params, x, c, method=ConditionalVAE._kl, per_dim=False)

  @nn.nowrap
  def analytic_kl_groups(self, params, batch) -> Array:
    """Per-dimension KL(q(z_j|x, c) ‖ p(z_j|c)), ``(batch, latent_dim)``: diagonal Gaussians."""
    x, c = self.inputs(batch)
    return self.apply(params, x, c, method=ConditionalVAE._kl, per_dim=True)

  def _kl(self, x: Array, c: Array, per_dim: bool):
    q = self.encode(x, c)
    prior = self.prior_distribution(c)
    if per_dim:
      return kl_per_dim(q, prior)
    kl = analytic_kl(q, prior)
    return jnp.broadcast_to(kl, (x.shape[0],))

  # -- generation -------------------------------------------------------------------------------

  @nn.nowrap
  def generate(self, params, key, c: Array, *, mean: bool = True) -> Array:
    """x ~ p(x|z, c) (or its mean) for z ~ p(z|c), one per row of c ``(n, cond_dim)``."""
    c = self.check_c(c)
    return self.apply(params, key, c, mean, method=ConditionalVAE._generate)

  def _generate(self, key, c: Array, mean: bool):
    z_key, x_key = jax.random.split(key)
    prior = self.prior_distribution(c)
    # A conditional prior has batch shape (n,); an unconditional one (): draw one z per row.
    z = prior.sample(seed=z_key, sample_shape=() if prior.batch_shape else (c.shape[0],))
    px = self.decode(z, c)
    return px.mean() if mean else px.sample(seed=x_key)

  @nn.nowrap
  def reconstruct(self, params, key, batch) -> Array:
    """The mean of p(x|z, c) at one z ~ q(z|x, c) per example: ``(batch, *event)``."""
    z = self.propose(params, key, batch, num_samples=1).z
    return self.apply(params, z[0], batch.c, method=lambda m, z, c: m.decode(z, c).mean())

  @property
  def latent_dim(self) -> int:
    if isinstance(self.prior, distrax.Distribution):
      return self.prior.event_shape[-1]
    dim = getattr(self.encoder, "latent_dim", None)
    if dim is None:
      raise AttributeError("latent size unknown: give the ConditionalVAE an encoder with a "
                           "`latent_dim` attribute")
    return dim

  @property
  def event_shape(self) -> tuple[int, ...] | None:
    """The shape of one x when the decoder declares it, else None."""
    shape = getattr(self.decoder, "event_shape", None)
    return None if shape is None else tuple(shape)


def _diag_log_prob(dist, z: Array) -> Array | None:
  """Per-dimension log N(z_j; μ_j, σ_j²) of a diagonal Gaussian, shape ``z.shape``; else None."""
  if not isinstance(dist, distrax.MultivariateNormalDiag):
    return None
  scaled = (z - dist.loc) / dist.scale_diag
  return -0.5 * jnp.square(scaled) - jnp.log(dist.scale_diag) - 0.5 * math.log(2 * math.pi)


# ------------------------------------------------------------------------------------------------
# The preset.

LIKELIHOODS = ("bernoulli", "gaussian")


def cvae(*, event_shape: Sequence[int], cond_dim: int, latent_dim: int = 20,
         hidden: Sequence[int] = (500,), prior_hidden: Sequence[int] | None = None,
         activation: Callable[[Array], Array] = nn.tanh,
         likelihood: str = "bernoulli") -> ConditionalVAE:
  """An MLP conditional VAE (Sohn et al. 2015) with a Gaussian q(z|x, c) and prior net p(z|c).

  Encoder ``[x, c]`` → ``hidden`` → factorized Gaussian; decoder ``[z, c]`` → reversed
  ``hidden`` → p(x|z, c); prior network c → ``prior_hidden`` → factorized Gaussian.

  Args:
    event_shape: shape of one x (e.g. ``(64,)`` digits, ``(588,)`` three MNIST quadrants).
    cond_dim: width of c (e.g. 10 for one-hot digit labels, 196 for one MNIST quadrant).
    latent_dim: size of z.
    hidden: encoder hidden widths; the decoder mirrors them.
    prior_hidden: hidden widths of the prior network (default: ``hidden``).
    activation: hidden non-linearity.
    likelihood: ``"bernoulli"`` (binary data) or ``"gaussian"`` (learned scale).
  """
  if likelihood == "bernoulli":
    head = BernoulliLikelihood(tuple(event_shape))
  elif likelihood == "gaussian":
    head = GaussianLikelihood(tuple(event_shape), learn_scale=True)
  else:
    raise ValueError(f"unknown likelihood {likelihood!r}; expected one of {LIKELIHOODS}")
  if isinstance(cond_dim, bool) or not isinstance(cond_dim, int) or cond_dim < 1:
    raise ValueError(f"cond_dim must be a positive int, got {cond_dim!r}")
  hidden = tuple(hidden)
  encoder = Encoder(MLP(hidden, activation), GaussianPosterior(latent_dim))
  decoder = Decoder(MLP(tuple(reversed(hidden)), activation), head)
  prior = ConditionalGaussianPrior(latent_dim, tuple(hidden if prior_hidden is None
                                                     else prior_hidden), activation)
  return ConditionalVAE(encoder, decoder, prior, cond_dim)
