"""Ready-made MLP VAEs, including the two classic architectures (layer 3)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn

from jvae.distributions.flows import IAFPosterior
from jvae.distributions.likelihoods import BernoulliLikelihood, GaussianLikelihood
from jvae.models.hierarchical import HierarchicalVAE
from jvae.models.ladder import LadderVAE
from jvae.models.vae import VAE
from jvae.models.networks import MLP, Decoder, Encoder
from jvae.distributions.posteriors import FullCovGaussianPosterior, GaussianPosterior

POSTERIORS = ("gaussian", "fullcov", "iaf")
LIKELIHOODS = ("bernoulli", "gaussian")


def _posterior_head(posterior: str, latent_dim: int, iaf_steps: int, iaf_hidden: Sequence[int]):
  if posterior == "gaussian":
    return GaussianPosterior(latent_dim, fuse_heads=True)
  if posterior == "fullcov":
    return FullCovGaussianPosterior(latent_dim)
  if posterior == "iaf":
    return IAFPosterior(latent_dim, num_steps=iaf_steps, hidden=tuple(iaf_hidden),
                        context_dim=iaf_hidden[0])
  raise ValueError(f"unknown posterior {posterior!r}; expected one of {POSTERIORS}")


def _likelihood_head(likelihood: str, event_shape):
  if likelihood == "bernoulli":
    return BernoulliLikelihood(tuple(event_shape))
  if likelihood == "gaussian":
    return GaussianLikelihood(tuple(event_shape), learn_scale=True)
  raise ValueError(f"unknown likelihood {likelihood!r}; expected one of {LIKELIHOODS}")


def mlp_vae(*, event_shape: Sequence[int] = (784,), latent_dim: int = 20,
            hidden: Sequence[int] = (500,), activation=nn.tanh, posterior: str = "gaussian",
            likelihood: str = "bernoulli", iaf_steps: int = 2,
            iaf_hidden: Sequence[int] = (64, 64)) -> VAE:
  """An MLP VAE: encoder x → ``hidden`` → posterior head; decoder z → reversed ``hidden`` → p(x|z).

  Args:
    event_shape: shape of one x.
    latent_dim: size of z.
    hidden: encoder hidden widths; the decoder mirrors them.
    activation: hidden non-linearity.
    posterior: ``"gaussian"`` (factorized), ``"fullcov"`` or ``"iaf"``.
    likelihood: ``"bernoulli"`` (binary data) or ``"gaussian"`` (learned scale).
    iaf_steps, iaf_hidden: IAF depth and MADE widths when ``posterior="iaf"``.
  """
  encoder = Encoder(MLP(tuple(hidden), activation),
                    _posterior_head(posterior, latent_dim, iaf_steps, iaf_hidden))
  decoder = Decoder(MLP(tuple(reversed(hidden)), activation),
                    _likelihood_head(likelihood, event_shape))
  return VAE(encoder, decoder)


def kingma2014(*, event_shape: Sequence[int] = (784,), latent_dim: int = 20, **kwargs) -> VAE:
  """Kingma & Welling (2014) MNIST model: 784-500-20, one tanh hidden layer each side."""
  return mlp_vae(event_shape=event_shape, latent_dim=latent_dim, hidden=(500,), **kwargs)


def burda2015(*, event_shape: Sequence[int] = (784,), latent_dim: int = 50, **kwargs) -> VAE:
  """Burda et al. (2015) one-stochastic-layer model: 784-200-200-50 tanh, mirrored decoder."""
  return mlp_vae(event_shape=event_shape, latent_dim=latent_dim, hidden=(200, 200), **kwargs)


PRESETS = {"kingma2014": kingma2014, "burda2015": burda2015}


# -- models with several stochastic layers -------------------------------------------------------


def burda2015_2layer(*, event_shape: Sequence[int] = (784,), latent_dims: Sequence[int] = (100, 50),
                     hidden: Sequence[Sequence[int]] = ((200, 200), (100, 100)),
                     activation=nn.tanh, posterior: str = "gaussian",
                     likelihood: str = "bernoulli", iaf_steps: int = 2,
                     iaf_hidden: Sequence[int] = (64, 64)) -> HierarchicalVAE:
  """Burda et al. (2015) two-stochastic-layer model: 784-(200,200)-100-(100,100)-50, tanh.

  q(z1|x): x → 200 → 200 → z1 (100); q(z2|z1): z1 → 100 → 100 → z2 (50); p(z1|z2):
  z2 → 100 → 100 → z1 (100), a factorized Gaussian; p(x|z1): z1 → 200 → 200 → x. Other lengths
  give other depths: layer l has latent size ``latent_dims[l]`` and hidden widths ``hidden[l]``,
  mirrored in p(z_{l−1}|z_l) (p(x|z1) for l = 1).

  Args:
    event_shape: shape of one x.
    latent_dims: (d_1, …, d_L).
    hidden: per layer, the widths of its MLPs.
    activation: hidden non-linearity.
    posterior: head of every q layer: ``"gaussian"`` (factorized), ``"fullcov"`` or ``"iaf"``.
    likelihood: ``"bernoulli"`` or ``"gaussian"`` (learned scale).
    iaf_steps, iaf_hidden: IAF depth and MADE widths when ``posterior="iaf"``.
  """
  if len(latent_dims) != len(hidden) or not latent_dims:
    raise ValueError(f"need one hidden-width tuple per stochastic layer, got latent_dims="
                     f"{tuple(latent_dims)} and hidden={tuple(map(tuple, hidden))}")
  encoders = [Encoder(MLP(tuple(h), activation),
                      _posterior_head(posterior, d, iaf_steps, iaf_hidden))
              for d, h in zip(latent_dims, hidden, strict=True)]
  decoders = [Decoder(MLP(tuple(reversed(hidden[0])), activation),
                      _likelihood_head(likelihood, event_shape))]
  decoders += [Decoder(MLP(tuple(reversed(hidden[i])), activation),
                       GaussianPosterior(latent_dims[i - 1])) for i in range(1, len(hidden))]
  return HierarchicalVAE(tuple(encoders), tuple(decoders))


def lvae(*, event_shape: Sequence[int] = (784,), hidden: Sequence[int] = (512, 256),
         latent_dims: Sequence[int] = (64, 32), depth: int = 2, activation=nn.leaky_relu,
         likelihood: str = "bernoulli") -> LadderVAE:
  """A Ladder VAE (Sønderby et al. 2016) with MLP blocks, two stochastic layers by default.

  Layer l has a bottom-up block d_l = MLP(d_{l−1}) of ``depth`` layers of width ``hidden[l]``
  with a Gaussian head of size ``latent_dims[l]``; the top-down p(z_l|z_{l+1}) has the block of
  layer l + 1 and p(x|z_1) that of layer 1. Sønderby et al.'s MNIST model has the shape
  ``lvae(hidden=(512, 256, 128, 64, 32), latent_dims=(64, 32, 16, 8, 4))``; they add batch
  normalisation, which this preset leaves out, and KL warm-up (``jvae.trainer(...,
  warmup_steps=N)``).

  Args:
    event_shape: shape of one x.
    hidden: deterministic widths, one per stochastic layer.
    latent_dims: (d_1, …, d_L).
    depth: Dense layers per block.
    activation: hidden non-linearity.
    likelihood: ``"bernoulli"`` or ``"gaussian"`` (learned scale).
  """
  if len(latent_dims) != len(hidden) or not latent_dims or depth < 1:
    raise ValueError(f"need one width per stochastic layer and depth >= 1, got hidden="
                     f"{tuple(hidden)}, latent_dims={tuple(latent_dims)}, depth={depth}")
  block = lambda width: MLP((width,) * depth, activation)
  return LadderVAE(
      bottom_up=tuple(block(h) for h in hidden),
      heads=tuple(GaussianPosterior(d) for d in latent_dims),
      top_down=tuple(Decoder(block(hidden[i + 1]), GaussianPosterior(latent_dims[i]))
                     for i in range(len(hidden) - 1)),
      decoder=Decoder(block(hidden[0]), _likelihood_head(likelihood, event_shape)))


PRESETS.update({"burda2015_2layer": burda2015_2layer, "lvae": lvae})
