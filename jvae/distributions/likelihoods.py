"""Observation models p(x|z) as linen heads emitting distrax distributions (layer 2).

A likelihood head maps features of shape ``(..., batch, features)`` to a distribution with batch
shape ``(..., batch)`` and event shape ``event_shape``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jvae.bounds.numerics import (bernoulli_log_prob, bernoulli_log_prob_sum, check_number,
                                  softplus_scale)

Array = jax.Array


class StableBernoulli(distrax.Bernoulli):
  """A Bernoulli whose log-prob is ``x log σ(l) + (1-x) log σ(-l)``: finite for logits of ±1e4.

  Also accepts non-binary x in [0, 1] (the cross-entropy used for grey-scale data). x outside
  [0, 1], ±inf or NaN is outside the support: ``log_prob`` is NaN in that entry (see
  :func:`jvae.bounds.numerics.bernoulli_log_prob`), so the bound is NaN, never a number.
  """

  def log_prob(self, value: Array) -> Array:
    """Elementwise log-probability of ``value``; NaN where it is not in [0, 1]."""
    return bernoulli_log_prob(self.logits, jnp.asarray(value, self.logits.dtype))


class IndependentBernoulli(distrax.Independent):
  """``distrax.Independent`` of a :class:`StableBernoulli` whose ``log_prob`` sums in one fused
  pass (:func:`jvae.bounds.numerics.bernoulli_log_prob_sum`: an ``exp`` per pixel and a ``log``
  per block of at most 64 pixels, the closed-form gradient); equal to the elementwise sum to
  float32 round-off."""

  def log_prob(self, value: Array) -> Array:
    if self.reinterpreted_batch_ndims == 0:
      return self.distribution.log_prob(value)
    logits = self.distribution.logits
    return bernoulli_log_prob_sum(logits, jnp.asarray(value, logits.dtype),
                                  event_ndims=self.reinterpreted_batch_ndims)


def bernoulli(logits: Array, event_ndims: int = 1) -> distrax.Distribution:
  """Independent Bernoulli over the trailing ``event_ndims`` axes of ``logits``."""
  return IndependentBernoulli(StableBernoulli(logits=logits), event_ndims)


class BernoulliLikelihood(nn.Module):
  """p(x|z) = Π_i Bernoulli(x_i | sigmoid(logit_i)), logits from a Dense layer.

  Attributes:
    event_shape: shape of one x, e.g. ``(784,)`` or ``(28, 28)``.
  """

  event_shape: Sequence[int]

  @nn.compact
  def __call__(self, h: Array) -> distrax.Distribution:
    shape = tuple(self.event_shape)
    logits = nn.Dense(math.prod(shape), name="logits")(h)
    return bernoulli(logits.reshape(*h.shape[:-1], *shape), len(shape))


class GaussianLikelihood(nn.Module):
  r"""p(x|z) = N(μ(z), diag σ²) with a fixed σ, or a learned σ.

  .. math:: \log p(x|z) = \sum_i -\tfrac12\big(\tfrac{x_i-μ_i}{σ_i}\big)^2 - \log σ_i
     - \tfrac12\log 2π.

  Non-finite x is outside the support: x = NaN gives a NaN log-prob and x = ±inf gives −inf, never
  a finite value or +inf.

  Attributes:
    event_shape: shape of one x.
    scale: a fixed σ; ignored when ``learn_scale``, but a finite number > 0 either way.
    learn_scale: if True, σ = softplus(·) + ``min_scale`` is emitted per dimension by the network.
    min_scale: floor on a learned σ, a finite number > 0.

  Raises:
    ValueError: when built with a static ``scale`` or ``min_scale`` that is 0, negative, NaN or
      infinite (the density is then undefined).
  """

  event_shape: Sequence[int]
  scale: float = 1.0
  learn_scale: bool = False
  min_scale: float = 1e-3

  def __post_init__(self):
    check_number(self.scale, "GaussianLikelihood scale", minimum=0.0, strict=True)
    check_number(self.min_scale, "GaussianLikelihood min_scale", minimum=0.0, strict=True)
    super().__post_init__()

  @nn.compact
  def __call__(self, h: Array) -> distrax.Distribution:
    shape = tuple(self.event_shape)
    n = math.prod(shape)
    loc = nn.Dense(n, name="loc")(h).reshape(*h.shape[:-1], *shape)
    if self.learn_scale:
      raw = nn.Dense(n, name="scale")(h).reshape(*h.shape[:-1], *shape)
      scale = softplus_scale(raw, self.min_scale)
    else:
      scale = jnp.full_like(loc, self.scale)
    return distrax.Independent(distrax.Normal(loc, scale), len(shape))
