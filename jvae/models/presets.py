"""Ready-made MLP VAEs, including the two classic architectures (layer 3)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn

from jvae.distributions.flows import IAFPosterior
from jvae.distributions.likelihoods import BernoulliLikelihood, GaussianLikelihood
from jvae.models.vae import VAE
from jvae.models.networks import MLP, Decoder, Encoder
from jvae.distributions.posteriors import FullCovGaussianPosterior, GaussianPosterior

POSTERIORS = ("gaussian", "fullcov", "iaf")
LIKELIHOODS = ("bernoulli", "gaussian")


def _posterior_head(posterior: str, latent_dim: int, iaf_steps: int, iaf_hidden: Sequence[int]):
  if posterior == "gaussian":
    return GaussianPosterior(latent_dim)
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
