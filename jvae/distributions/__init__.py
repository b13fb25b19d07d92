"""Layer 2: posteriors, likelihoods, flows and closed-form KLs, all distrax; discrete latents and
their relaxations as array functions (``discrete``)."""

from jvae.distributions.discrete import (
    bernoulli_kl,
    bernoulli_log_prob,
    binary_concrete_log_prob,
    binary_concrete_sample,
    categorical_kl,
    categorical_log_prob,
    concrete_log_prob,
    exp_concrete_log_prob,
    exp_concrete_sample,
    hard_bernoulli,
    hard_categorical,
    sample_bernoulli,
    sample_categorical,
    straight_through,
)
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
    "bernoulli_log_prob", "sample_bernoulli", "bernoulli_kl", "categorical_log_prob",
    "sample_categorical", "categorical_kl", "binary_concrete_sample", "binary_concrete_log_prob",
    "exp_concrete_sample", "exp_concrete_log_prob", "concrete_log_prob", "straight_through",
    "hard_bernoulli", "hard_categorical",
]
