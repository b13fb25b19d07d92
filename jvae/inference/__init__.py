"""Layer 5: inference beyond the amortized q(z|x), for any model that meets the contract.

HMC on p(z|x) (``hmc_posterior``, blackjax kernels), AIS estimates of log p(x) and BDMC sandwiches
(``ais_log_marginal``, ``bdmc``), MCMC-refined learning (``mcmc_em``); per-data-point variational
parameters (``optimize_local``, ``variational_em``), the semi-amortized VAE
(``semi_amortized_elbo``) and the approximation / amortization gaps (``amortization_gap``).
"""

from jvae.inference.active_units import ActiveUnits, active_units
from jvae.inference.ais import ais_log_marginal, ais_schedule, bdmc
from jvae.inference.hmc import HMCInfo, hmc_posterior
from jvae.inference.mcmc_em import mcmc_em
from jvae.inference.gap import amortization_gap, format_table, with_log_marginal
from jvae.inference.local import (
    EMState,
    LocalGaussian,
    VariationalEM,
    amortized_local,
    init_local,
    local_covariance,
    local_distribution,
    local_elbo,
    local_table,
    optimize_local,
    variational_em,
)
from jvae.inference.semi_amortized import refine, semi_amortized_elbo

__all__ = [
    "ActiveUnits", "active_units",
    "HMCInfo", "hmc_posterior", "ais_log_marginal", "ais_schedule", "bdmc", "mcmc_em",
    "LocalGaussian", "local_table", "amortized_local", "init_local", "local_distribution",
    "local_covariance",
    "local_elbo", "optimize_local", "EMState", "VariationalEM", "variational_em",
    "refine", "semi_amortized_elbo", "amortization_gap", "format_table", "with_log_marginal",
]
