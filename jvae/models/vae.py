"""The latent-variable model p(x, z) = p(z) p(x|z) with amortized q(z|x), as one linen module."""

from __future__ import annotations

import math

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jvae.distributions.kl import analytic_kl, kl_per_dim
from jvae.distributions.posteriors import FullCovarianceGaussian, standard_normal
from jvae.models.contract import Joint, Proposal, data_of

Array = jax.Array


class VAE(nn.Module):
  """A variational autoencoder: encoder q(z|x), decoder p(x|z) and prior p(z).

  Attributes:
    encoder: linen module mapping x of shape ``(batch, *event)`` to a distrax distribution over z
      with batch shape ``(batch,)`` and event shape ``(latent_dim,)``.
    decoder: linen module mapping z of shape ``(..., batch, latent_dim)`` to a distrax distribution
      over x with event shape ``event``.
    prior: p(z): a fixed distrax distribution over z, or a learned prior (a linen module called
      as ``prior(encoder)`` that returns one, e.g. :class:`jvae.VampPrior`); default N(0, I) of
      the encoder's latent size.

  ``params = model.init(key, x)`` is a plain pytree; ``model.apply(params, x, method="encode")``
  and ``model.apply(params, z, method="decode")`` give the two conditionals. The VAE meets
  :class:`jvae.LatentModel` (``propose``, returning the closed-form KL where there is one, and
  ``log_joint``), so every objective applies to it.
  """

  encoder: nn.Module
  decoder: nn.Module
  prior: distrax.Distribution | nn.Module | None = None

  def __call__(self, batch):
    """Initialisation path: q(z|x), p(x|z=0) and p(z). Returns ``(q, p_x_given_z)``."""
    x = data_of(batch)
    q = self.encode(x)
    z = jnp.zeros((x.shape[0], *q.event_shape), x.dtype)
    self.prior_distribution(q.event_shape[-1])
    return q, self.decode(z)

  def encode(self, x: Array) -> distrax.Distribution:
    """q(z|x) for x of shape ``(batch, *event)``."""
    check_input(self, x)
    return self.encoder(x)

  def decode(self, z: Array) -> distrax.Distribution:
    """p(x|z) for z of shape ``(..., batch, latent_dim)``."""
    return self.decoder(z)

  def prior_distribution(self, latent_dim: int | None = None) -> distrax.Distribution:
    """p(z): the given prior, or N(0, I) of size ``latent_dim`` (default: the encoder's).

    A learned prior (a linen module) is only available inside ``apply``.
    """
    if isinstance(self.prior, nn.Module):
      return self.prior(self.encoder)
    if self.prior is not None:
      return self.prior
    return standard_normal(latent_dim if latent_dim is not None else self.latent_dim)

  # -- the jvae.LatentModel contract ------------------------------------------------------------

  @nn.nowrap
  def propose(self, params, key, batch, *, num_samples: int, density_params=None) -> Proposal:
    """z_k ~ q(z|x), ``(K, batch, latent_dim)``, with log q ``(K, batch)`` (the contract).

    ``log_q_groups`` holds the per-dimension log-densities when q is a factorized Gaussian;
    ``kl`` and ``kl_groups`` the closed-form KL(q ‖ p) where the pair has one (computed from the
    same encoder pass; unused values cost nothing under ``jit``).
    """
    x = data_of(batch)
    q = self.apply(params, x, method=VAE.encode)
    z, log_q = _draw(q, key, num_samples)
    kl, kl_groups = self.apply(params, q, method=VAE._kl_to_prior)
    q_density = q if density_params is None else self.apply(density_params, x, method=VAE.encode)
    if density_params is not None:
      log_q = q_density.log_prob(z)
    groups = _diag_log_prob(q_density, z) if _is_diag(q_density) else None
    if num_samples == 1:
      z, log_q, groups = _add_sample_axis((z, log_q, groups))
    return Proposal(z, log_q, groups, kl, kl_groups)

  def _kl_to_prior(self, q):
    prior = self.prior_distribution(q.event_shape[-1])
    try:
      kl = analytic_kl(q, prior)
    except ValueError:  # no closed form for this pair (e.g. IAF, a mixture prior)
      return None, None
    return kl, kl_per_dim(q, prior) if _is_diag(q) and _is_diag(prior) else None

  @nn.nowrap
  def log_joint(self, params, batch, z: Array) -> Joint:
    """log p(x|z) and log p(z), each ``(K, batch)``, for z of shape ``(K, batch, latent_dim)``."""
    x = data_of(batch)
    one = z.ndim >= 1 and z.shape[0] == 1
    log_lik, log_prior, groups = self.apply(params, x, z[0] if one else z, method=VAE._log_joint)
    out = (log_lik, log_prior, groups)
    return Joint(*(_add_sample_axis(out) if one else out))

  def _log_joint(self, x: Array, z: Array):
    px = self.decode(z)
    if tuple(px.event_shape) != tuple(x.shape[1:]):
      raise ValueError(f"the decoder's event shape {tuple(px.event_shape)} does not match "
                       f"x of shape {tuple(x.shape)}")
    prior = self.prior_distribution(z.shape[-1])
    groups = _diag_log_prob(prior, z) if _is_diag(prior) else None
    return px.log_prob(x), prior.log_prob(z), groups

  # -- MCMC: AIS and BDMC (optional methods of the contract, jvae.inference) --------------------

  @nn.nowrap
  def sample_prior(self, params, key, batch, *, num_samples: int) -> Array:
    """z ~ p(z), ``(K, batch, latent_dim)``, shaped like :meth:`propose`'s z (AIS from the prior).

    A learned prior is sampled inside ``apply``, as :func:`jvae.prior_samples` does.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
      raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    return self.apply(params, data_of(batch), key, num_samples, method=VAE._sample_prior)

  def _sample_prior(self, x: Array, key, num_samples: int):
    dim = None
    if self.prior is None and getattr(self.encoder, "latent_dim", None) is None:
      dim = self.encode(x).event_shape[-1]
    prior = self.prior_distribution(dim)
    return prior.sample(seed=key, sample_shape=(num_samples, x.shape[0]))

  @nn.nowrap
  def log_q(self, params, batch, z: Array) -> Array:
    """log q(z|x) at given z ``(K, batch, latent_dim)``: ``(K, batch)`` (AIS from q).

    An IAF posterior evaluates it through its exact sequential inverse (d network passes per
    step, see :class:`jvae.IAFStep`).
    """
    x = data_of(batch)
    return self.apply(params, x, method=VAE.encode).log_prob(z)

  @nn.nowrap
  def sample_joint(self, params, key, num: int) -> tuple[Array, Array]:
    """(z, x) ~ p(z) p(x|z): z ``(1, num, latent_dim)`` (propose's shape with K = 1) and x
    ``(num, *event)`` as floats, for bidirectional Monte Carlo on simulated data."""
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
      raise ValueError(f"num must be an integer >= 1, got {num!r}")
    return self.apply(params, key, num, method=VAE._sample_joint)

  def _sample_joint(self, key, num: int):
    z_key, x_key = jax.random.split(key)
    z = self.prior_distribution().sample(seed=z_key, sample_shape=(num,))
    x = self.decode(z).sample(seed=x_key)
    if not jnp.issubdtype(x.dtype, jnp.floating):
      x = x.astype(z.dtype)
    return z[None], x

  # -- pictures (optional, outside the contract) -----------------------------------------------

  @nn.nowrap
  def generate(self, params, key, num: int, *, mean: bool = True) -> Array:
    """x ~ p(x|z) (or its mean) for ``num`` draws z ~ p(z): ``(num, *event)``."""
    return self.apply(params, key, num, mean, method=VAE._generate)

  def _generate(self, key, num: int, mean: bool):
    z_key, x_key = jax.random.split(key)
    z = self.prior_distribution().sample(seed=z_key, sample_shape=(num,))
    px = self.decode(z)
    return px.mean() if mean else px.sample(seed=x_key)

  @nn.nowrap
  def reconstruct(self, params, key, batch) -> Array:
    """The mean of p(x|z) at one z ~ q(z|x) per example: ``(batch, *event)``."""
    z = self.propose(params, key, batch, num_samples=1).z
    return self.apply(params, z[0], method=lambda m, z: m.decode(z).mean())

  @property
  def latent_dim(self) -> int:
    if self.prior is not None and not isinstance(self.prior, nn.Module):
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

  # -- local inference (optional, outside the contract) -----------------------------------------

  @nn.nowrap
  def amortized_gaussian(self, params, batch):
    """The encoder's Gaussian q(z|x) as arrays, for local inference started from it.

    Used by :func:`jvae.inference.optimize_local` (``init="amortized"``) and the semi-amortized
    objective (Kim et al. 2018) to read the amortized variational parameters λ(x).

    Args:
      params: model parameters.
      batch: x ``(batch, *event)`` or a :class:`jvae.Batch`.
    Returns:
      ``(loc, scale, lower)``: μ ``(batch, d)``, σ ``(batch, d)`` > 0, and for a full-covariance
      encoder (L = L_mask ⊙ L′ + diag σ) the strictly lower-triangular L_mask ⊙ L′
      ``(batch, d, d)``; ``lower`` is None for a factorized one.
    Raises:
      TypeError: the encoder's q(z|x) is not a Gaussian (e.g. an IAF posterior).
    """
    q = self.apply(params, data_of(batch), method=VAE.encode)
    if isinstance(q, FullCovarianceGaussian):
      shape = (*q.loc.shape, q.loc.shape[-1])
      return q.loc, q.scale_diag, jnp.broadcast_to(q.bijector.lower, shape)
    if _is_diag(q):
      return q.loc, jnp.broadcast_to(q.scale_diag, q.loc.shape), None
    raise TypeError(f"amortized_gaussian needs a Gaussian encoder (factorized or full "
                    f"covariance); this VAE's q(z|x) is a {type(q).__name__}")


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


def _draw(q, key, num_samples: int):
  """z and log q(z|x) with the sample axis first; for K = 1 without it, ``(batch, d)``.

  The same random numbers either way. Decoding a size-1 sample axis would cost XLA transposes in
  the decoder's weight gradients for ``(1, batch, ·)`` activations (~4% of a step), so
  :meth:`VAE.propose` adds the axis after sampling and :meth:`VAE.log_joint` drops it before
  decoding; both are free reshapes.
  """
  if num_samples == 1:
    return q.sample_and_log_prob(seed=key)
  return q.sample_and_log_prob(seed=key, sample_shape=(num_samples,))


def _add_sample_axis(tree):
  return jax.tree_util.tree_map(lambda a: a[None], tree)


def _is_diag(dist) -> bool:
  return isinstance(dist, distrax.MultivariateNormalDiag)


def _diag_log_prob(dist, z: Array) -> Array:
  """Per-dimension log N(z_j; μ_j, σ_j²) of a diagonal Gaussian; shape ``z.shape``."""
  scaled = (z - dist.loc) / dist.scale_diag
  return -0.5 * jnp.square(scaled) - jnp.log(dist.scale_diag) - 0.5 * math.log(2 * math.pi)
