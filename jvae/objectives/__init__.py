"""Layer 4: objectives bind a model to a bound, giving ``f(params, key, batch) -> Array[batch]``.

``log_weights`` draws samples through the model contract with the gradient paths of each
estimator; ``objectives`` holds the bound factories; ``log_marginal`` the chunked estimate.
"""

from jvae.objectives.binarize import bernoulli_draw, dynamic_binarization
from jvae.objectives.log_marginal import log_marginal
from jvae.objectives.log_weights import ESTIMATORS, LogWeights, check_key, sample_log_weights
from jvae.objectives.objectives import ciwae, elbo, iwae, kl_groups, miwae, piwae, renyi
from jvae.objectives.semi_supervised import (
    classification_error,
    kingma_alpha,
    labelled_bounds,
    semi_supervised_elbo,
    unlabelled_elbo,
    unlabelled_log_marginal,
)

__all__ = ["bernoulli_draw", "dynamic_binarization",
           "ESTIMATORS", "LogWeights", "check_key", "ciwae", "elbo", "iwae", "kl_groups",
           "log_marginal", "miwae", "piwae", "renyi", "sample_log_weights", "classification_error",
           "kingma_alpha", "labelled_bounds", "semi_supervised_elbo", "unlabelled_elbo",
           "unlabelled_log_marginal"]
