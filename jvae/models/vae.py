"""The latent-variable model p(x, z) = p(z) p(x|z) with amortized q(z|x), as one linen module."""

from __future__ import annotations


import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jvae.distributions.posteriors import standard_normal

Array = jax.Array


class VAE(nn.Module):
  """A variational autoencoder: encoder q(z|x), decoder p(x|z) and prior p(z).

  Attributes:
    encoder: linen module mapping x of shape ``(batch, *event)`` to a distrax distribution over z
      with batch shape ``(batch,)`` and event shape ``(latent_dim,)``.
    decoder: linen module mapping z of shape ``(..., batch, latent_dim)`` to a distrax distribution
      over x with event shape ``event``.
    prior: a distrax distribution over z (default: N(0, I) of the encoder's latent size).

  ``params = model.init(key, x)`` is a plain pytree; ``model.apply(params, x, method="encode")``
  and ``model.apply(params, z, method="decode")`` give the two conditionals. Bounds are built from
  these by :func:`jvae.elbo`, :func:`jvae.iwae` and :func:`jvae.log_marginal`.
  """

  encoder: nn.Module
  decoder: nn.Module
  prior: distrax.Distribution | None = None

  def __call__(self, x: Array):
    """Initialisation path: q(z|x) and p(x|z=0). Returns ``(q, p_x_given_z)``."""
    q = self.encode(x)
    z = jnp.zeros((x.shape[0], *q.event_shape), x.dtype)
    return q, self.decode(z)

  def encode(self, x: Array) -> distrax.Distribution:
    """q(z|x) for x of shape ``(batch, *event)``."""
    check_input(self, x)
    return self.encoder(x)

  def decode(self, z: Array) -> distrax.Distribution:
    """p(x|z) for z of shape ``(..., batch, latent_dim)``."""
    return self.decoder(z)

  def prior_distribution(self, latent_dim: int | None = None) -> distrax.Distribution:
    """p(z): the given prior, or N(0, I) of size ``latent_dim`` (default: the encoder's)."""
    if self.prior is not None:
      return self.prior
    return standard_normal(latent_dim if latent_dim is not None else self.latent_dim)

  @property
  def latent_dim(self) -> int:
    if self.prior is not None:
      return self.prior.event_shape[-1]
    dim = getattr(self.encoder, "latent_dim", None)
    if dim is None:
      raise AttributeError(
          "latent size unknown: give the VAE a prior or an encoder with a `latent_dim` attribute")
    return dim

  @property
  def event_shape(self) -> tuple[int, ...] | None:
    """The shape of one x when the decoder declares it, else None."""
    shape = getattr(self.decoder, "event_shape", None)
    return None if shape is None else tuple(shape)


def check_input(model: VAE, x: Array) -> None:
  """Raise a ValueError, at trace time, when x does not fit the model's event shape."""
  event = model.event_shape
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    raise TypeError(f"x must be an array of shape (batch, *event), got {type(x).__name__}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"x must be a floating-point array, got dtype {x.dtype}")
  if event is not None and (x.ndim != 1 + len(event) or tuple(x.shape[1:]) != event):
    raise ValueError(
        f"x must have shape (batch, {', '.join(map(str, event))}) for this model "
        f"(event shape {event}), got {tuple(x.shape)}")
  if event is None and x.ndim < 2:
    raise ValueError(f"x must have shape (batch, *event), got {tuple(x.shape)}")
