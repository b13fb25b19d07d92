"""Layer 2: posteriors, likelihoods, flows and closed-form KLs, all distrax."""

from jvae.distributions.flows import IAFPosterior, IAFStep, made_masks
from jvae.distributions.kl import analytic_kl, kl_per_dim
from jvae.distributions.likelihoods import (
    BernoulliLikelihood,
    GaussianLikelihood,
    StableBernoulli,
    bernoulli,
)
from jvae.distributions.posteriors import (
    FullCovarianceGaussian,
    FullCovGaussianPosterior,
    GaussianPosterior,
    TriangularAffine,
    standard_normal,
)

__all__ = [
    "IAFPosterior", "IAFStep", "made_masks", "analytic_kl", "kl_per_dim", "BernoulliLikelihood",
    "GaussianLikelihood", "StableBernoulli", "bernoulli", "FullCovarianceGaussian",
    "FullCovGaussianPosterior", "GaussianPosterior", "TriangularAffine", "standard_normal",
]
