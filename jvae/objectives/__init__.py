"""Layer 4: objectives bind a model to a bound, giving ``f(params, key, batch) -> Array[batch]``."""

from jvae.objectives.objectives import (
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

__all__ = ["LogWeights", "check_key", "ciwae", "elbo", "iwae", "log_marginal", "miwae", "piwae",
           "renyi", "sample_log_weights"]
