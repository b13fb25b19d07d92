r"""Learned priors p(z) (and p(z|c)) as linen modules that return distrax distributions (layer 3).

A learned prior is a linen module that a model calls inside ``apply`` and that returns a distrax
distribution over z with event shape ``(latent_dim,)``; its parameters live in the model's
parameter tree under the attribute name (``params["params"]["prior"]``):

* :class:`jvae.VAE` calls ``prior(encoder)``: the VampPrior uses the encoder, the others ignore it.
* :class:`jvae.ConditionalVAE` calls ``prior(c)``: :class:`ConditionalGaussianPrior` is the
  prior network p(z|c) of Sohn et al. (2015); the unconditional priors ignore c.

The priors:

* :class:`LearnedGaussianPrior`: N(μ, diag σ²); closed-form KL to a Gaussian q.
* :class:`MixturePrior`: Σ_c π_c N(μ_c, diag σ_c²); no closed-form KL.
* :class:`VampPrior`: (1/C) Σ_c q(z|u_c) at learned pseudo-inputs u_c; no closed-form KL.
* :class:`ConditionalGaussianPrior`: N(μ(c), diag σ(c)²); closed-form KL to a Gaussian q.

Mixtures have no closed-form KL to a Gaussian q, so ``kl="analytic"`` raises a ValueError naming
the pair (from :func:`jvae.analytic_kl`); use ``kl="sample"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jvae.bounds.numerics import softplus_scale
from jvae.distributions.posteriors import DEFAULT_MIN_SCALE, GaussianPosterior
from jvae.models.networks import MLP

Array = jax.Array


def _raw_scale_init(scale: float, min_scale: float):
  """An initializer for raw r with ``softplus(r) + min_scale == scale``."""
  if scale <= min_scale:
    raise ValueError(f"init_scale {scale} must exceed min_scale {min_scale}")
  raw = math.log(math.expm1(scale - min_scale))
  return nn.initializers.constant(raw)


def inverse_softplus_scale(scale: Array, min_scale: float = DEFAULT_MIN_SCALE) -> Array:
  """The raw parameter r with ``softplus(r) + min_scale == scale`` (to set a prior's σ)."""
  return jnp.log(jnp.expm1(jnp.asarray(scale) - min_scale))


class LearnedGaussianPrior(nn.Module):
  r"""A learned diagonal Gaussian prior p(z) = N(μ, diag σ²), σ = softplus(r) + ``min_scale``.

  Starts at N(0, I) (μ = 0, r = softplus⁻¹(1 − min_scale)). It returns a
  ``distrax.MultivariateNormalDiag``, so ``kl="analytic"`` and per-dimension KL (free bits) keep
  working: KL(N(m, s²) ‖ N(μ, σ²)) = ½[(m − μ)²/σ² + s²/σ² − 1 − log(s²/σ²)] per dimension.

  Parameters: ``loc`` ``(latent_dim,)`` and ``scale`` ``(latent_dim,)`` (the raw r).

  Attributes:
    latent_dim: size d of z.
    min_scale: floor on σ.
  """

  latent_dim: int
  min_scale: float = DEFAULT_MIN_SCALE

  @nn.compact
  def __call__(self, context=None) -> distrax.MultivariateNormalDiag:
    """p(z); ``context`` (the VAE's encoder, or a CVAE's c) is ignored."""
    del context
    d = self.latent_dim
    loc = self.param("loc", nn.initializers.zeros, (d,))
    raw = self.param("scale", _raw_scale_init(1.0, self.min_scale), (d,))
    return distrax.MultivariateNormalDiag(loc, softplus_scale(raw, self.min_scale))


class MixturePrior(nn.Module):
  r"""A learned mixture of diagonal Gaussians p(z) = Σ_c π_c N(z; μ_c, diag σ_c²).

  π = softmax(logits) with logits initialised to 0 (uniform weights), μ_c ~ N(0, ``init_spread``²)
  per coordinate (distinct components, so the mixture is not stuck symmetric) and σ_c = 1.

  .. math::
     \log p(z) = \operatorname{logsumexp}_c \big[\log π_c + \log N(z; μ_c, \operatorname{diag}
     σ_c^2)\big]

  Parameters: ``logits`` ``(C,)``, ``loc`` ``(C, d)`` and ``scale`` ``(C, d)`` (raw; σ = softplus
  + ``min_scale``). There is no closed-form KL(q ‖ p): use ``kl="sample"``.

  Attributes:
    latent_dim: size d of z.
    num_components: C.
    init_spread: standard deviation of the initial component means.
    min_scale: floor on σ_c.
  """

  latent_dim: int
  num_components: int
  init_spread: float = 1.0
  min_scale: float = DEFAULT_MIN_SCALE

  @nn.compact
  def __call__(self, context=None) -> distrax.MixtureSameFamily:
    """p(z); ``context`` (the VAE's encoder, or a CVAE's c) is ignored."""
    del context
    c, d = _check_components(self.num_components), self.latent_dim
    logits = self.param("logits", nn.initializers.zeros, (c,))
    loc = self.param("loc", nn.initializers.normal(self.init_spread), (c, d))
    raw = self.param("scale", _raw_scale_init(1.0, self.min_scale), (c, d))
    components = distrax.MultivariateNormalDiag(loc, softplus_scale(raw, self.min_scale))
    return distrax.MixtureSameFamily(distrax.Categorical(logits=logits), components)


class VampPrior(nn.Module):
  r"""The VampPrior: a mixture of the variational posteriors at C learned pseudo-inputs u_c.

  Tomczak & Welling (2018), "VAE with a VampPrior":

  .. math::
     p_λ(z) = \frac1C \sum_{c=1}^C q_φ(z|u_c),\qquad
     \log p_λ(z) = \operatorname{logsumexp}_c \log q_φ(z|u_c) − \log C.

  The encoder q_φ is the model's own, with the same parameters (called as ``encoder(u)``, so it
  is shared, not copied); only the pseudo-inputs ``pseudo_inputs`` ``(C, *event_shape)`` are new
  parameters, initialised from N(``init_mean``, ``init_std``²) (defaults 0.5, 0.1: grey images in
  the middle of [0, 1] for binary data; Tomczak & Welling use a small-variance normal init too).
  They are used as they are, unconstrained. The return value is
  ``distrax.MixtureSameFamily(Categorical(logits=0), q(z|u))``, whose components are the
  encoder's distribution with batch shape ``(C,)``; ``log_prob`` of z ``(..., batch, d)`` mixes
  over the component axis and gives ``(..., batch)``. Any encoder works (an IAF one evaluates
  log q(z|u_c) through its inverse). There is no closed-form KL(q ‖ p): use ``kl="sample"``.

  Cost: one encoder pass over C pseudo-inputs per prior evaluation, and C component densities
  per z.

  Attributes:
    num_components: C, the number of pseudo-inputs (500 in the paper for MNIST).
    event_shape: shape of one x (the encoder's input), e.g. ``(784,)``.
    init_mean, init_std: the normal initialisation of the pseudo-inputs.
  """

  num_components: int
  event_shape: Sequence[int]
  init_mean: float = 0.5
  init_std: float = 0.1

  @nn.compact
  def __call__(self, encoder: Callable[[Array], distrax.Distribution]) -> distrax.Distribution:
    """p(z) for the model's ``encoder`` (x ``(C, *event)`` → q(z|x) of batch shape ``(C,)``)."""
    if not callable(encoder):
      raise TypeError(
          "VampPrior needs the model's encoder: it is called as prior(encoder) by jvae.VAE; got "
          f"{type(encoder).__name__}. A ConditionalVAE's p(z|c) cannot be a VampPrior.")
    c = _check_components(self.num_components)
    shape = (c, *tuple(self.event_shape))
    mean, std = self.init_mean, self.init_std
    u = self.param("pseudo_inputs",
                   lambda key, s: mean + std * jax.random.normal(key, s, jnp.float32), shape)
    q = encoder(u)
    if tuple(q.batch_shape) != (c,):
      raise ValueError(f"the encoder on the {c} pseudo-inputs gave a distribution of batch shape "
                       f"{tuple(q.batch_shape)}; expected ({c},)")
    return distrax.MixtureSameFamily(distrax.Categorical(logits=jnp.zeros((c,), u.dtype)), q)


class ConditionalGaussianPrior(nn.Module):
  r"""The prior network p(z|c) = N(μ(c), diag σ(c)²) of a conditional VAE (Sohn et al. 2015).

  c ``(batch, cond_dim)`` → :class:`jvae.MLP` ``hidden`` → :class:`jvae.GaussianPosterior` head
  (σ = softplus + ``min_scale``); batch shape ``(batch,)``, so log p(z|c) of z
  ``(K, batch, d)`` is ``(K, batch)`` and KL(q(z|x, c) ‖ p(z|c)) has a closed form.

  Parameters: ``network`` (``dense_i``) and ``head`` (``loc``, ``scale``).

  Attributes:
    latent_dim: size d of z.
    hidden: widths of the MLP on c; empty makes μ and σ affine in c.
    activation: hidden non-linearity.
    min_scale: floor on σ.
  """

  latent_dim: int
  hidden: Sequence[int] = (64,)
  activation: Callable[[Array], Array] = nn.tanh
  min_scale: float = DEFAULT_MIN_SCALE

  @nn.compact
  def __call__(self, c: Array) -> distrax.MultivariateNormalDiag:
    if not hasattr(c, "ndim") or c.ndim != 2:
      raise ValueError("ConditionalGaussianPrior needs c of shape (batch, cond_dim), got "
                       f"{getattr(c, 'shape', type(c).__name__)}")
    h = MLP(tuple(self.hidden), self.activation, name="network")(c)
    return GaussianPosterior(self.latent_dim, self.min_scale, name="head")(h)


def _check_components(num_components) -> int:
  if isinstance(num_components, bool) or not isinstance(num_components, int) or num_components < 1:
    raise ValueError(f"num_components must be a positive int, got {num_components!r}")
  return num_components


def prior_samples(model, params, key, num: int) -> Array:
  """z ~ p(z), ``(num, latent_dim)``, for a :class:`jvae.VAE` with a fixed or learned prior.

  A learned prior exists only inside ``apply`` (the VampPrior needs the encoder's parameters), so
  ``model.prior_distribution()`` cannot be sampled outside it; this draws inside ``apply``.
  Decode with ``model.apply(params, z, method=jvae.VAE.decode)``.
  """

  def draw(module, key):
    return module.prior_distribution().sample(seed=key, sample_shape=(num,))

  return model.apply(params, key, method=draw)
