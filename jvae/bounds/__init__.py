"""Layer 1: numerics and bounds on arrays of log-weights (no keys, no Flax).

``jvae.bounds.elbo(log_w)`` etc. reduce the sample axis of log-weights ``(K, ...)``; the
stabilizers (KL warm-up, free bits) are pure functions of the step or of per-dimension KL.
"""

from jvae.bounds import numerics, stabilizers
from jvae.bounds.log_weights import ciwae, elbo, iwae, log_mean_exp, miwae, renyi

__all__ = ["elbo", "iwae", "renyi", "miwae", "ciwae", "log_mean_exp", "numerics", "stabilizers"]
