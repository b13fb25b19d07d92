"""jvae: variational autoencoders and variational inference in JAX.

Every bound is a pure function ``f(params, key, x) -> Array[batch]`` over a Flax VAE; ``jax.jit``,
``jax.vmap`` and ``jax.grad`` apply to it directly.
"""

from jvae import bounds, stabilizers
from jvae._flows import IAFPosterior, IAFStep, made_masks
from jvae._kl import analytic_kl, kl_per_dim
from jvae._likelihoods import BernoulliLikelihood, GaussianLikelihood, StableBernoulli, bernoulli
from jvae._models import VAE
from jvae._networks import MLP, Decoder, Encoder
from jvae._fit import FitState, fit, fit_init, make_epoch_fn, seed_keys, summarize
from jvae._objectives import (
    LogWeights,
    check_key,
    ciwae,
    elbo,
    iwae,
    log_marginal,
    miwae,
    piwae,
    renyi,
    sample_log_weights,
)
from jvae._training import Trainer, TrainState, evaluate, trainer
from jvae._posteriors import (
    FullCovarianceGaussian,
    FullCovGaussianPosterior,
    GaussianPosterior,
    TriangularAffine,
    standard_normal,
)
from jvae._parallel import batch_sharding, make_mesh, place_fit_state, replicated
from jvae._presets import PRESETS, burda2015, kingma2014, mlp_vae

__version__ = "0.1.0"

__all__ = [
    "VAE",
    "MLP",
    "Encoder",
    "Decoder",
    "GaussianPosterior",
    "FullCovGaussianPosterior",
    "IAFPosterior",
    "IAFStep",
    "made_masks",
    "FullCovarianceGaussian",
    "TriangularAffine",
    "BernoulliLikelihood",
    "GaussianLikelihood",
    "StableBernoulli",
    "bernoulli",
    "standard_normal",
    "analytic_kl",
    "kl_per_dim",
    "elbo",
    "iwae",
    "log_marginal",
    "renyi",
    "miwae",
    "ciwae",
    "piwae",
    "Trainer",
    "TrainState",
    "trainer",
    "evaluate",
    "FitState",
    "fit",
    "fit_init",
    "make_epoch_fn",
    "seed_keys",
    "make_mesh",
    "batch_sharding",
    "place_fit_state",
    "replicated",
    "summarize",
    "sample_log_weights",
    "LogWeights",
    "check_key",
    "mlp_vae",
    "kingma2014",
    "burda2015",
    "PRESETS",
    "bounds",
    "stabilizers",
]
