r"""Hierarchical VAEs with bottom-up inference: L ≥ 1 stochastic layers (Burda et al. 2015).

The generative model is a chain from the top layer down to x,

.. math::
   p(x, z_1, …, z_L) = p(x|z_1)\, p(z_1|z_2) ⋯ p(z_{L−1}|z_L)\, p(z_L),
   \qquad p(z_L) = N(0, I)\ \text{by default},

and the inference model runs the other way, bottom-up (Burda et al. 2015, Sec. 2; Rezende et al.
2014, Sec. 3):

.. math::
   q(z_1, …, z_L|x) = q(z_1|x)\, q(z_2|z_1) ⋯ q(z_L|z_{L−1}).

Sampling is ancestral through q with every layer reparameterized, z_l = g_l(ε_l, φ, z_{l−1}), so
the whole tuple z = (z_1, …, z_L) is a differentiable function of (ε, φ, x), and

.. math::
   \log q(z|x) = \sum_{l=1}^L \log q(z_l|z_{l−1}),\qquad
   \log p(z) = \sum_{l=1}^{L−1} \log p(z_l|z_{l+1}) + \log p(z_L)

(z_0 = x). The per-layer terms are the ``log_q_groups`` and ``log_prior_groups`` of the contract,
one group per layer, so free bits (Kingma et al. 2016) apply layer by layer with ``kl="sample"``.

There is no ``analytic_kl``: KL(q(z|x) ‖ p(z)) of the whole hierarchy has no closed form (the
closed-form KL of one layer is conditional on a sample of its neighbour), so the objectives reject
``kl="analytic"`` for this model and the sampled KL log q − log p is used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import chex
import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jvae.distributions.posteriors import standard_normal
from jvae.models.contract import Joint, Proposal, data_of
from jvae.models.vae import check_input

Array = jax.Array


class HierarchicalVAE(nn.Module):
  """A VAE with L stochastic layers, bottom-up q(z_1|x) ⋯ q(z_L|z_{L−1}), top-down p.

  Attributes:
    encoders: L linen modules; ``encoders[0]`` maps x ``(batch, *event)`` to a distrax
      distribution over z_1 (batch shape ``(batch,)``, event ``(d_1,)``), e.g.
      ``Encoder(MLP((200, 200)), GaussianPosterior(100))``; ``encoders[l]`` maps z_l ``(n, d_l)``
      to q(z_{l+1}|z_l) with batch shape ``(n,)``. Any reparameterized head works (factorized,
      full-covariance, IAF).
    decoders: L linen modules; ``decoders[0]`` is the likelihood p(x|z_1) (z_1
      ``(..., batch, d_1)`` → distribution with event shape ``event``), ``decoders[l]`` for
      l ≥ 1 maps z_{l+1} ``(n, d_{l+1})`` to the conditional p(z_l|z_{l+1}) with batch shape
      ``(n,)`` and event ``(d_l,)``, e.g. ``Decoder(MLP((100, 100)), GaussianPosterior(100))``.
    prior: p(z_L): a distrax distribution over ``(d_L,)``; default N(0, I).

  Latents are a tuple ``z = (z_1, …, z_L)``, each leaf ``(K, batch, d_l)``. The model meets
  :class:`jvae.LatentModel` (``init``, ``propose``, ``log_joint``; one KL group per layer) and has
  no analytic KL (module docstring).
  """

  encoders: Sequence[nn.Module]
  decoders: Sequence[nn.Module]
  prior: distrax.Distribution | None = None

  def __call__(self, batch):
    """Initialisation path: every conditional once, at z = 0. Returns ``p(x|z_1 = 0)``."""
    x = data_of(batch)
    self._check_input(x)
    q = self.encoders[0](x)
    zs = [jnp.zeros((x.shape[0], q.event_shape[-1]), x.dtype)]
    for encoder in self.encoders[1:]:
      q = _conditional(encoder, zs[-1])
      zs.append(jnp.zeros((x.shape[0], q.event_shape[-1]), x.dtype))
    for i, decoder in enumerate(self.decoders[1:], start=1):
      _conditional(decoder, zs[i])
    self.prior_distribution(zs[-1].shape[-1])
    return self.decoders[0](zs[0])

  def prior_distribution(self, latent_dim: int) -> distrax.Distribution:
    """p(z_L): the given prior, or N(0, I) of size ``latent_dim``."""
    return standard_normal(latent_dim) if self.prior is None else self.prior

  # -- the jvae.LatentModel contract ------------------------------------------------------------

  @nn.nowrap
  def propose(self, params, key, batch, *, num_samples: int, density_params=None) -> Proposal:
    """z ~ q(z_1|x) q(z_2|z_1) ⋯ ancestrally; log q ``(K, batch)`` and per-layer groups.

    With ``density_params``, every layer's log q is re-evaluated at ``density_params`` on the
    same samples (each q(z_l|z_{l−1}) with the sampled, still differentiable z_{l−1}), which is
    what STL and DReG need.

    Returns:
      ``Proposal(z, log_q, log_q_groups)``: z a tuple of ``(K, batch, d_l)``, ``log_q_groups``
      ``(K, batch, L)`` ordered l = 1…L.
    """
    check_num_samples(num_samples)
    x = data_of(batch)
    zs, log_qs = self.apply(params, x, key, num_samples, method=HierarchicalVAE._sample)
    if density_params is not None:
      log_qs = self.apply(density_params, x, zs, method=HierarchicalVAE._log_q)
    return stack_proposal(zs, log_qs, num_samples)

  @nn.nowrap
  def log_joint(self, params, batch, z) -> Joint:
    """log p(x|z_1) and log p(z) = Σ_l log p(z_l|z_{l+1}), each ``(K, batch)``.

    Args:
      z: a tuple ``(z_1, …, z_L)`` as :meth:`propose` returns it, each ``(K, batch, d_l)``.
    Returns:
      ``Joint(log_lik, log_prior, log_prior_groups)`` with groups ``(K, batch, L)``.
    """
    x = data_of(batch)
    zs, one = unstack_latents(z, len(self.encoders), x.shape[0])
    return stack_joint(*self.apply(params, x, zs, method=HierarchicalVAE._log_joint), one)

  def _sample(self, x: Array, key, num_samples: int):
    self._check_input(x)
    keys = jax.random.split(key, len(self.encoders))
    q = self.encoders[0](x)
    z, log_q = _draw(q, keys[0], num_samples)
    zs, log_qs = [z], [log_q]
    for encoder, k in zip(self.encoders[1:], keys[1:], strict=True):
      z, log_q = _draw_conditional(_conditional(encoder, zs[-1]), k, zs[-1].shape[:-1])
      zs.append(z)
      log_qs.append(log_q)
    return tuple(zs), log_qs

  def _log_q(self, x: Array, zs):
    self._check_input(x)
    log_qs = [self.encoders[0](x).log_prob(zs[0])]
    for i, encoder in enumerate(self.encoders[1:], start=1):
      log_qs.append(_conditional_log_prob(encoder, zs[i - 1], zs[i]))
    return log_qs

  def _log_joint(self, x: Array, zs):
    self._check_input(x)
    px = self.decoders[0](zs[0])
    check_likelihood(px, x)
    log_priors = [_conditional_log_prob(self.decoders[i], zs[i], zs[i - 1])
                  for i in range(1, len(zs))]
    log_priors.append(top_prior_log_prob(self.prior_distribution(zs[-1].shape[-1]), zs[-1]))
    return px.log_prob(x), log_priors

  def _check_input(self, x: Array) -> None:
    if len(self.encoders) < 1 or len(self.encoders) != len(self.decoders):
      raise ValueError(
          f"a HierarchicalVAE needs L >= 1 encoders and as many decoders (p(x|z_1), then "
          f"p(z_l|z_(l+1)) for l < L); got {len(self.encoders)} encoders and "
          f"{len(self.decoders)} decoders")
    check_input(self, x)

  # -- pictures (optional, outside the contract) -----------------------------------------------

  @nn.nowrap
  def generate(self, params, key, num: int, *, mean: bool = True) -> Array:
    """x ~ p(x|z_1) (or its mean), z drawn ancestrally from p(z_L) down: ``(num, *event)``."""
    return self.apply(params, key, num, mean, method=HierarchicalVAE._generate)

  def _generate(self, key, num: int, mean: bool):
    d_top = top_latent_dim(self.prior, self.encoders[-1])
    return ancestral_sample(self.prior_distribution(d_top), list(self.decoders[1:]),
                            self.decoders[0], key, num, mean)

  @nn.nowrap
  def reconstruct(self, params, key, batch) -> Array:
    """The mean of p(x|z_1) at one z ~ q(z|x) per example: ``(batch, *event)``."""
    z1 = self.propose(params, key, batch, num_samples=1).z[0][0]
    return self.apply(params, z1, method=lambda m, z: m.decoders[0](z).mean())

  @property
  def num_layers(self) -> int:
    """L, the number of stochastic layers."""
    return len(self.encoders)

  @property
  def event_shape(self) -> tuple[int, ...] | None:
    """The shape of one x when the likelihood decoder declares it, else None."""
    shape = getattr(self.decoders[0], "event_shape", None)
    return None if shape is None else tuple(shape)


# -- helpers shared with jvae.models.ladder ------------------------------------------------------


def top_latent_dim(prior, module) -> int:
  """d_L from a given prior, else from ``module.latent_dim`` (an Encoder or posterior head)."""
  if prior is not None:
    return prior.event_shape[-1]
  dim = getattr(module, "latent_dim", None)
  if dim is None:
    raise AttributeError("the top layer's size is unknown: give a prior, or a top encoder/head "
                         "with a `latent_dim` attribute")
  return dim


def ancestral_sample(top: distrax.Distribution, conditionals, likelihood: nn.Module, key,
                     num: int, mean: bool) -> Array:
  """z_L ~ ``top``, z_l ~ ``conditionals[l − 1](z_{l+1})`` down to z_1, then x ~ p(x|z_1).

  ``conditionals[l − 1]`` maps z_{l+1} to p(z_l|z_{l+1}) (l = 1…L−1); inside ``apply``.
  """
  keys = jax.random.split(key, len(conditionals) + 2)
  z = top.sample(seed=keys[0], sample_shape=(num,))
  for net, k in zip(reversed(conditionals), keys[1:-1], strict=True):
    z = _conditional(net, z).sample(seed=k)
  px = likelihood(z)
  return px.mean() if mean else px.sample(seed=keys[-1])


def check_num_samples(num_samples) -> int:
  """Raise a ValueError unless ``num_samples`` is an integer ≥ 1."""
  if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
    raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
  return num_samples


def check_likelihood(px: distrax.Distribution, x: Array) -> None:
  """Raise a ValueError when p(x|z_1)'s event shape does not match x."""
  if tuple(px.event_shape) != tuple(x.shape[1:]):
    raise ValueError(f"the likelihood decoder's event shape {tuple(px.event_shape)} does not "
                     f"match x of shape {tuple(x.shape)}")


def top_prior_log_prob(prior: distrax.Distribution, z: Array) -> Array:
  """log p(z_L), after checking the prior's event shape against z_L ``(..., d_L)``."""
  if tuple(prior.event_shape) != (z.shape[-1],):
    raise ValueError(f"the top prior p(z_L) has event shape {tuple(prior.event_shape)}, but z_L "
                     f"has size {z.shape[-1]}")
  return prior.log_prob(z)


def stack_proposal(zs, log_qs, num_samples: int) -> Proposal:
  """A :class:`Proposal` from per-layer samples and log q's (sample axis added for K = 1)."""
  groups = jnp.stack(log_qs, axis=-1)
  zs = tuple(zs)
  if num_samples == 1:
    zs, groups = jax.tree_util.tree_map(lambda a: a[None], (zs, groups))
  chex.assert_shape(groups, (num_samples, None, len(zs)))
  chex.assert_equal_shape_prefix([*zs, groups], 2)
  return Proposal(zs, jnp.sum(groups, axis=-1), groups)


def unstack_latents(z, num_layers: int, batch: int):
  """Check a latent tuple ``(z_1, …, z_L)`` of ``(K, batch, d_l)``; drop the axis when K = 1.

  Returns:
    ``(zs, one)``: the layers (each ``(batch, d_l)`` when K = 1) and whether K = 1.
  """
  if not isinstance(z, tuple | list) or len(z) != num_layers:
    raise ValueError(f"z must be a tuple (z_1, ..., z_L) of {num_layers} arrays as propose "
                     f"returns it, got {type(z).__name__}"
                     + (f" of length {len(z)}" if isinstance(z, tuple | list) else ""))
  for i, zl in enumerate(z, start=1):
    if getattr(zl, "ndim", None) != 3 or zl.shape[1] != batch or zl.shape[0] != z[0].shape[0]:
      raise ValueError(
          f"z_{i} must have shape (K, batch={batch}, d_{i}) with the same K as z_1 "
          f"{tuple(getattr(z[0], 'shape', ()))}, got {tuple(getattr(zl, 'shape', ()))}")
  one = z[0].shape[0] == 1
  return tuple(zl[0] for zl in z) if one else tuple(z), one


def stack_joint(log_lik: Array, log_priors, one: bool) -> Joint:
  """A :class:`Joint` from log p(x|z_1) and the per-layer log-priors (axis restored for K = 1)."""
  groups = jnp.stack(log_priors, axis=-1)
  if one:
    log_lik, groups = log_lik[None], groups[None]
  chex.assert_equal_shape_prefix([log_lik, groups], 2)
  return Joint(log_lik, jnp.sum(groups, axis=-1), groups)


def _draw(q: distrax.Distribution, key, num_samples: int):
  """Sample and log q with the sample axis first; for K = 1 without it (see ``jvae.VAE``)."""
  if num_samples == 1:
    return q.sample_and_log_prob(seed=key)
  return q.sample_and_log_prob(seed=key, sample_shape=(num_samples,))


def _flatten(h: Array) -> Array:
  """``(*lead, d)`` → ``(prod(lead), d)``: conditionals see one batch axis."""
  return h.reshape(math.prod(h.shape[:-1]), h.shape[-1])


def _conditional(module: nn.Module, h: Array) -> distrax.Distribution:
  """``module`` applied to ``h`` ``(*lead, d_in)`` flattened to ``(n, d_in)``: batch ``(n,)``."""
  dist = module(_flatten(h))
  if len(dist.event_shape) != 1:
    raise ValueError(f"a conditional over a latent layer must have a vector event shape, got "
                     f"{tuple(dist.event_shape)} from {type(module).__name__}")
  return dist


def _draw_conditional(dist: distrax.Distribution, key, lead: tuple[int, ...]):
  """One sample per row of a flattened conditional, reshaped back to ``(*lead, d)``."""
  z, log_q = dist.sample_and_log_prob(seed=key)
  return z.reshape(*lead, z.shape[-1]), log_q.reshape(lead)


def _conditional_log_prob(module: nn.Module, h: Array, z: Array) -> Array:
  """log density of z ``(*lead, d)`` under ``module(h)`` with h ``(*lead, d_in)``; ``lead``."""
  dist = _conditional(module, h)
  if dist.event_shape[-1] != z.shape[-1]:
    raise ValueError(f"{type(module).__name__} gives a distribution over size "
                     f"{dist.event_shape[-1]}, but the layer it scores has size {z.shape[-1]}")
  return dist.log_prob(_flatten(z)).reshape(z.shape[:-1])
