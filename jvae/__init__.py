"""jvae: variational autoencoders and variational inference in JAX.

Every bound is a pure function ``f(params, key, batch) -> Array[batch]`` over any model that meets
the :class:`LatentModel` contract (``propose`` and ``log_joint``; ``VAE`` and jvae's other model
families do); ``jax.jit``, ``jax.vmap`` and ``jax.grad`` apply to it directly.
"""

import sys as _sys

from jvae import bounds
from jvae.bounds import stabilizers
from jvae.distributions import (
    BernoulliLikelihood,
    FullCovarianceGaussian,
    FullCovGaussianPosterior,
    GaussianLikelihood,
    GaussianPosterior,
    IAFPosterior,
    IAFStep,
    StableBernoulli,
    TriangularAffine,
    analytic_kl,
    bernoulli,
    kl_per_dim,
    made_masks,
    standard_normal,
)
from jvae.io import checkpoint, data
from jvae.models import (
    MLP,
    PRESETS,
    VAE,
    Batch,
    ConditionalGaussianPrior,
    ConditionalVAE,
    Decoder,
    Encoder,
    Joint,
    LatentModel,
    LearnedGaussianPrior,
    MixturePrior,
    Proposal,
    VampPrior,
    burda2015,
    cvae,
    kingma2014,
    mlp_vae,
    oracles,
    prior_samples,
)
from jvae.objectives import (
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
from jvae.training import (
    FitState,
    Trainer,
    TrainState,
    batch_sharding,
    evaluate,
    fit,
    fit_init,
    make_epoch_fn,
    make_mesh,
    place_fit_state,
    replicated,
    seed_keys,
    summarize,
    trainer,
)

# The modules that lived at the top level before the layered layout stay importable there
# (``import jvae.data``), so code written against the old paths keeps working.
for _name, _module in {"data": data, "checkpoint": checkpoint, "oracles": oracles,
                       "stabilizers": stabilizers}.items():
  _sys.modules[f"{__name__}.{_name}"] = _module
del _name, _module

__version__ = "0.1.0"

__all__ = [
    "LatentModel",
    "Proposal",
    "Joint",
    "Batch",
    "VAE",
    "ConditionalVAE",
    "VampPrior",
    "LearnedGaussianPrior",
    "MixturePrior",
    "ConditionalGaussianPrior",
    "prior_samples",
    "cvae",
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
    "oracles",
    "data",
    "checkpoint",
]
