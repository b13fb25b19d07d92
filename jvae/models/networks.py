"""Plain networks, and encoder/decoder wrappers that put a distribution head on them (layer 3)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax

Array = jax.Array


class MLP(nn.Module):
  """A multilayer perceptron on the last axis: Dense → activation for each width.

  Attributes:
    widths: hidden widths, e.g. ``(200, 200)``; empty gives the identity.
    activation: elementwise non-linearity (default ``tanh``, as in Kingma & Welling 2014 and
      Burda et al. 2015).
  """

  widths: Sequence[int]
  activation: Callable[[Array], Array] = nn.tanh

  @nn.compact
  def __call__(self, h: Array) -> Array:
    for i, width in enumerate(self.widths):
      h = self.activation(nn.Dense(width, name=f"dense_{i}")(h))
    return h


class Encoder(nn.Module):
  """x ``(batch, *event)`` → flatten → ``network`` → ``head`` → q(z|x), batch shape ``(batch,)``."""

  network: nn.Module
  head: nn.Module

  @nn.compact
  def __call__(self, x: Array):
    return self.head(self.network(x.reshape(x.shape[0], -1)))

  @property
  def latent_dim(self) -> int:
    return self.head.latent_dim


class Decoder(nn.Module):
  """z ``(..., batch, latent_dim)`` → ``network`` → ``head`` → p(x|z) with event shape ``event``."""

  network: nn.Module
  head: nn.Module

  @nn.compact
  def __call__(self, z: Array):
    return self.head(self.network(z))

  @property
  def event_shape(self) -> tuple[int, ...]:
    return tuple(self.head.event_shape)
