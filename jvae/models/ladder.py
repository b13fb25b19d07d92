r"""The Ladder VAE: top-down inference that shares the generative networks (Sønderby et al. 2016).

The generative model is the same chain as a hierarchical VAE,

.. math::
   p(x, z) = p(x|z_1) \prod_{l=1}^{L−1} p(z_l|z_{l+1})\, p(z_L),\qquad
   p(z_l|z_{l+1}) = N(μ_{p,l}(z_{l+1}), σ_{p,l}^2(z_{l+1})),\quad p(z_L) = N(0, I).

Inference (Sønderby et al. 2016, Sec. 2.2, Eqs. 17–21) first runs a deterministic bottom-up pass
d_1 = MLP_1(x), d_l = MLP_l(d_{l−1}), each giving an approximate likelihood
N(\hat μ_l, \hat σ_l^2) = head_l(d_l). Then a top-down pass samples, in the generative order,

.. math::
   q(z_L|x) = N(\hat μ_L, \hat σ_L^2),\qquad
   q(z_l|z_{l+1}, x) = N(μ_{q,l}, σ_{q,l}^2),\quad
   σ_{q,l}^2 = \frac{1}{\hat σ_l^{−2} + σ_{p,l}^{−2}},\quad
   μ_{q,l} = \frac{\hat μ_l \hat σ_l^{−2} + μ_{p,l} σ_{p,l}^{−2}}{\hat σ_l^{−2} + σ_{p,l}^{−2}},

the precision-weighted combination of the bottom-up Gaussian with the generative p(z_l|z_{l+1}),
whose networks are the very ones of the generative model. So

.. math:: \log q(z|x) = \log q(z_L|x) + \sum_{l<L} \log q(z_l|z_{l+1}, x),

and log q depends on the bottom-up networks, the top-down networks and the sampled z_{l+1}. One
KL group per layer (``log_q_groups``/``log_prior_groups``) lets free bits act per layer.

There is no ``analytic_kl``: q(z_l|·) and p(z_l|z_{l+1}) are both Gaussian, but only given a
sample of z_{l+1}, so the closed-form layer KLs are not the KL of the whole q; the objectives
reject ``kl="analytic"`` for this model. Batch normalisation and KL warm-up, which Sønderby et
al. found crucial for deep ladders, are left to the networks and the trainer
(``jvae.trainer(..., warmup_steps=N)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jvae.distributions.posteriors import standard_normal
from jvae.models.contract import Joint, Proposal, data_of
from jvae.models.hierarchical import (
    _conditional,
    _conditional_log_prob,
    _draw,
    ancestral_sample,
    check_likelihood,
    check_num_samples,
    stack_joint,
    stack_proposal,
    top_latent_dim,
    top_prior_log_prob,
    unstack_latents,
)
from jvae.models.vae import check_input

Array = jax.Array


def precision_weighted(loc_hat: Array, scale_hat: Array, loc_p: Array,
                       scale_p: Array) -> tuple[Array, Array]:
  r"""The ladder merge of N(\hat μ, \hat σ^2) and N(μ_p, σ_p^2) (Sønderby et al. 2016, Eq. 19).

  Computed as σ_q^2 = \hat σ^2 σ_p^2 / (\hat σ^2 + σ_p^2) and
  μ_q = (\hat μ σ_p^2 + μ_p \hat σ^2) / (\hat σ^2 + σ_p^2): the same values as the precision form,
  without forming 1/σ² (no overflow for small σ). Arguments broadcast.

  Returns:
    ``(loc_q, scale_q)``.
  """
  var_hat, var_p = jnp.square(scale_hat), jnp.square(scale_p)
  total = var_hat + var_p
  return (loc_hat * var_p + loc_p * var_hat) / total, jnp.sqrt(var_hat * var_p / total)


class LadderVAE(nn.Module):
  """A Ladder VAE with L stochastic layers (module docstring).

  Attributes:
    bottom_up: L deterministic linen modules: ``bottom_up[0]`` maps x, flattened to
      ``(batch, prod(event))``, to d_1; ``bottom_up[l]`` maps d_l to d_{l+1} (e.g. ``MLP``).
    heads: L heads mapping d_l to a diagonal Gaussian N(\\hat μ_l, \\hat σ_l²) over z_l (e.g.
      ``GaussianPosterior(d_l)``; a ``distrax.MultivariateNormalDiag`` is required).
    top_down: L − 1 modules; ``top_down[l − 1]`` maps z_{l+1} ``(n, d_{l+1})`` to the diagonal
      Gaussian p(z_l|z_{l+1}) with batch shape ``(n,)`` (e.g.
      ``Decoder(MLP((256,)), GaussianPosterior(d_l))``); shared by p and q.
    decoder: the likelihood p(x|z_1), z_1 ``(..., batch, d_1)`` → distribution with event
      shape ``event``.
    prior: p(z_L): a distrax distribution over ``(d_L,)``; default N(0, I).

  Latents are a tuple ``z = (z_1, …, z_L)``, each leaf ``(K, batch, d_l)``; sampling runs
  top-down (z_L first). Meets :class:`jvae.LatentModel` with one KL group per layer.
  """

  bottom_up: Sequence[nn.Module]
  heads: Sequence[nn.Module]
  top_down: Sequence[nn.Module]
  decoder: nn.Module
  prior: distrax.Distribution | None = None

  def __call__(self, batch):
    """Initialisation path: every network once, at z = 0. Returns ``p(x|z_1 = 0)``."""
    x = data_of(batch)
    hats = self._bottom_up_pass(x)
    zs = [jnp.zeros_like(loc) for loc, _ in hats]
    for i, net in enumerate(self.top_down):
      _diag(_conditional(net, zs[i + 1]), f"top_down[{i}]")
    self.prior_distribution(zs[-1].shape[-1])
    return self.decoder(zs[0])

  def prior_distribution(self, latent_dim: int) -> distrax.Distribution:
    """p(z_L): the given prior, or N(0, I) of size ``latent_dim``."""
    return standard_normal(latent_dim) if self.prior is None else self.prior

  # -- the jvae.LatentModel contract ------------------------------------------------------------

  @nn.nowrap
  def propose(self, params, key, batch, *, num_samples: int, density_params=None) -> Proposal:
    """z ~ q top-down (z_L first); log q ``(K, batch)`` with per-layer groups ``(K, batch, L)``.

    With ``density_params``, log q is re-evaluated there (bottom-up pass and top-down networks)
    on the same, still differentiable samples: what STL and DReG need.
    """
    check_num_samples(num_samples)
    x = data_of(batch)
    zs, log_qs = self.apply(params, x, key, num_samples, method=LadderVAE._sample)
    if density_params is not None:
      log_qs = self.apply(density_params, x, zs, method=LadderVAE._log_q)
    return stack_proposal(zs, log_qs, num_samples)

  @nn.nowrap
  def log_joint(self, params, batch, z) -> Joint:
    """log p(x|z_1) and log p(z) = Σ_{l<L} log p(z_l|z_{l+1}) + log p(z_L), each ``(K, batch)``.

    Args:
      z: a tuple ``(z_1, …, z_L)`` as :meth:`propose` returns it, each ``(K, batch, d_l)``.
    """
    x = data_of(batch)
    zs, one = unstack_latents(z, len(self.heads), x.shape[0])
    return stack_joint(*self.apply(params, x, zs, method=LadderVAE._log_joint), one)

  def _bottom_up_pass(self, x: Array) -> list[tuple[Array, Array]]:
    """(\\hat μ_l, \\hat σ_l), each ``(batch, d_l)``, for l = 1…L."""
    self._check_input(x)
    d = x.reshape(x.shape[0], -1)
    hats = []
    for i, (net, head) in enumerate(zip(self.bottom_up, self.heads, strict=True)):
      d = net(d)
      q = _diag(head(d), f"heads[{i}]")
      hats.append((q.loc, q.scale_diag))
    return hats

  def _layer_q(self, hat, net: nn.Module, z_above: Array, i: int) -> distrax.Distribution:
    """q(z_l|z_{l+1}, x): ``hat`` merged with p(z_l|z_{l+1}); batch shape ``z_above.shape[:-1]``."""
    p = _diag(_conditional(net, z_above), f"top_down[{i}]")
    lead = z_above.shape[:-1]
    loc_p = p.loc.reshape(*lead, -1)
    scale_p = p.scale_diag.reshape(*lead, -1)
    return distrax.MultivariateNormalDiag(*precision_weighted(*hat, loc_p, scale_p))

  def _sample(self, x: Array, key, num_samples: int):
    hats = self._bottom_up_pass(x)
    num = len(hats)
    keys = jax.random.split(key, num)
    z, log_q = _draw(distrax.MultivariateNormalDiag(*hats[-1]), keys[-1], num_samples)
    zs, log_qs = [None] * num, [None] * num
    zs[-1], log_qs[-1] = z, log_q
    for i in reversed(range(num - 1)):
      q = self._layer_q(hats[i], self.top_down[i], zs[i + 1], i)
      zs[i], log_qs[i] = q.sample_and_log_prob(seed=keys[i])
    return tuple(zs), log_qs

  def _log_q(self, x: Array, zs):
    hats = self._bottom_up_pass(x)
    log_qs = [self._layer_q(hats[i], self.top_down[i], zs[i + 1], i).log_prob(zs[i])
              for i in range(len(hats) - 1)]
    log_qs.append(distrax.MultivariateNormalDiag(*hats[-1]).log_prob(zs[-1]))
    return log_qs

  def _log_joint(self, x: Array, zs):
    self._check_input(x)
    px = self.decoder(zs[0])
    check_likelihood(px, x)
    log_priors = [_conditional_log_prob(self.top_down[i], zs[i + 1], zs[i])
                  for i in range(len(zs) - 1)]
    log_priors.append(top_prior_log_prob(self.prior_distribution(zs[-1].shape[-1]), zs[-1]))
    return px.log_prob(x), log_priors

  def _check_input(self, x: Array) -> None:
    num = len(self.heads)
    if num < 1 or len(self.bottom_up) != num or len(self.top_down) != num - 1:
      raise ValueError(
          f"a LadderVAE with L layers needs L bottom_up nets, L heads and L - 1 top_down nets; "
          f"got {len(self.bottom_up)}, {num} and {len(self.top_down)}")
    check_input(self, x)

  # -- pictures (optional, outside the contract) -----------------------------------------------

  @nn.nowrap
  def generate(self, params, key, num: int, *, mean: bool = True) -> Array:
    """x ~ p(x|z_1) (or its mean), z drawn ancestrally from p(z_L) down: ``(num, *event)``."""
    return self.apply(params, key, num, mean, method=LadderVAE._generate)

  def _generate(self, key, num: int, mean: bool):
    d_top = top_latent_dim(self.prior, self.heads[-1])
    return ancestral_sample(self.prior_distribution(d_top), list(self.top_down), self.decoder,
                            key, num, mean)

  @nn.nowrap
  def reconstruct(self, params, key, batch) -> Array:
    """The mean of p(x|z_1) at one z ~ q(z|x) per example: ``(batch, *event)``."""
    z1 = self.propose(params, key, batch, num_samples=1).z[0][0]
    return self.apply(params, z1, method=lambda m, z: m.decoder(z).mean())

  @property
  def num_layers(self) -> int:
    """L, the number of stochastic layers."""
    return len(self.heads)

  @property
  def event_shape(self) -> tuple[int, ...] | None:
    """The shape of one x when the likelihood decoder declares it, else None."""
    shape = getattr(self.decoder, "event_shape", None)
    return None if shape is None else tuple(shape)


def _diag(dist, where: str) -> distrax.MultivariateNormalDiag:
  if not isinstance(dist, distrax.MultivariateNormalDiag):
    raise TypeError(f"the ladder merge needs diagonal Gaussians: {where} must return a "
                    f"distrax.MultivariateNormalDiag (e.g. a GaussianPosterior head), got "
                    f"{type(dist).__name__}")
  return dist
