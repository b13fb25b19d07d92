r"""MCMC-refined learning of a deep latent Gaussian model (Hoffman 2017) as a jvae objective.

Hoffman (2017), "Learning deep latent Gaussian models with Markov chain Monte Carlo", trains the
generative model p_θ(x, z) by stochastic (Monte-Carlo) EM: draw z_0 ~ q_φ(z|x), refine it by T
HMC transitions that leave p_θ(z|x) invariant, and ascend

.. math::
   \nabla_\theta \log p_\theta(x, z_T)

at the refined sample, which is an unbiased estimate of ∇_θ log p_θ(x) = E_{p(z|x)}[∇_θ log
p_θ(x, z)] as the chain mixes, rather than the ELBO's biased ∇_θ E_q[log p_θ(x, z)]. The encoder
only provides the chains' start and is trained on its own ELBO with the generative model held
fixed:

.. math::
   \nabla_\phi\, E_{q_\phi(z|x)}[\log p_{\bar\theta}(x, z) - \log q_\phi(z|x)].

Nothing is differentiated through the chain (z_T is stopped), so the cost is that of T·L
gradients of ``log_joint`` on top of the ELBO.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jvae.bounds.numerics import check_number
from jvae.models.contract import check_model
from jvae.objectives.log_weights import (
    check_estimator,
    check_num_samples,
    tree_stop,
    with_surrogate,
)
from jvae.objectives.objectives import Objective, with_checks
from jvae.inference.hmc import check_probability, hmc_posterior

MCMC_EM_ESTIMATORS = ("reparam", "stl")


def mcmc_em(model, *, num_steps: int, num_leapfrog: int = 10, step_size: float = 0.1,
            num_samples: int = 1, target_accept: float | None = 0.8,
            adapt_rate: float = 0.05, jitter: float = 0.5,
            estimator: str = "reparam") -> Objective:
  r"""The MCMC-EM objective of Hoffman (2017): decoder on log p(x, z_T), encoder on its ELBO.

  With z_k ~ q(z|x) (``model.propose`` at ``key``), k = 1 … K, and z_{T,k} the state after
  ``num_steps`` HMC transitions on p(z|x) started at stop(z_k) (``jvae.inference.hmc_posterior``
  at stopped params, key ``fold_in(key, 1)``), the function returns

  .. math::
     \text{value} = \frac1K \sum_k \big[\log p(x|z_k) + β(\log p(z_k) − \log q(z_k|x))\big],

  the K-sample Monte-Carlo ELBO, exactly the value of ``jvae.elbo(model, num_samples=K,
  kl="sample")`` at the same key, and its gradient is that of the surrogate

  .. math::
     \frac1K \sum_k \big[\log p_{\bar θ}(x|z_k) + β(\log p_{\bar θ}(z_k) − \log q_φ(z_k|x))\big]
     + \frac1K \sum_k \big[\log p_θ(x|\bar z_{T,k}) + β \log p_θ(\bar z_{T,k})\big]

  (bars: ``stop_gradient``). The first term reaches only the parameters through z_k and log q
  (the encoder φ: its reparameterized ELBO gradient, or STL with ``estimator="stl"``); the second
  only the parameters ``log_joint`` reads directly at fixed z (the decoder and prior θ; the
  encoder too only if the model's prior reads it, as a VampPrior's does). So the encoder gets
  nothing from the HMC term and the decoder nothing from the ELBO term. β is the trainer's KL
  weight (1: the plain objective); the chains always target p(z|x) itself.

  Step size: with ``target_accept`` set the objective is stateful (``f.init_state()``,
  ``f.with_state(params, key, batch, state)``, kept by :func:`jvae.trainer`): one running
  log ε, moved after every call by ``adapt_rate`` · (mean acceptance − ``target_accept``), so ε
  tracks the posterior as training changes it. A plain call uses the initial ε. With
  ``target_accept=None`` the step size is fixed and the objective stateless.

  Args:
    model: any :class:`jvae.LatentModel` with reparameterized latents.
    num_steps: HMC transitions T ≥ 1 per step of training.
    num_leapfrog: leapfrog steps L ≥ 1 per transition.
    step_size: the (initial) leapfrog step size ε > 0.
    num_samples: K ≥ 1 chains per data point (and samples of the ELBO).
    target_accept: acceptance rate the running step size aims for, in (0, 1), or None.
    adapt_rate: gain of that adaptation on log ε per call (≥ 0).
    jitter: the step-size randomization of :func:`jvae.inference.hmc_posterior`, in [0, 1).
    estimator: the encoder's ELBO gradient, ``"reparam"`` or ``"stl"``.

  Returns:
    ``f(params, key, batch, *, beta=1.0, temperature=None) -> Array[batch]`` (see above), with
    ``f.init_state``/``f.with_state`` when the step size adapts.
  """
  check_model(model)
  check_num_samples(num_samples)
  check_estimator(estimator, MCMC_EM_ESTIMATORS)
  check_number(adapt_rate, "adapt_rate", minimum=0.0)
  if target_accept is not None:
    check_probability(target_accept, "target_accept")
  hmc = hmc_posterior(model, num_steps=num_steps, num_leapfrog=num_leapfrog,
                      step_size=step_size, jitter=jitter,
                      target_accept=0.8 if target_accept is None else target_accept)

  def core(model, params, key, batch, beta, log_eps):
    density = tree_stop(params) if estimator == "stl" else None
    proposal = model.propose(params, key, batch, num_samples=num_samples,
                             density_params=density)
    if proposal.log_q_score is not None:
      raise ValueError(f"mcmc_em needs every latent of {type(model).__name__} reparameterized "
                       "(HMC moves z continuously); its proposal has discrete sites")
    frozen = tree_stop(params)
    joint = model.log_joint(frozen, batch, proposal.z)
    lw_phi = joint.log_lik + beta * (joint.log_prior - proposal.log_q)
    z_t, info = hmc(frozen, jax.random.fold_in(key, 1), batch, tree_stop(proposal.z),
                    step_size=jnp.exp(log_eps))
    z_t = tree_stop(z_t)
    refined = model.log_joint(params, batch, z_t)
    decoder_term = jnp.mean(refined.log_lik + beta * refined.log_prior, axis=0)
    elbo_phi = jnp.mean(lw_phi, axis=0)
    value = with_surrogate(elbo_phi, elbo_phi + decoder_term)
    return value, jax.lax.stop_gradient(jnp.mean(info.acceptance_rate))

  if target_accept is None:
    fixed = math.log(step_size)
    return with_checks(lambda *args: core(*args, fixed)[0], model)

  def init_state():
    return {"log_step_size": jnp.asarray(math.log(step_size), jnp.float32)}

  def body(model, params, key, batch, beta, state):
    log_eps = state["log_step_size"]
    value, accept = core(model, params, key, batch, beta, log_eps)
    return value, {"log_step_size": log_eps + adapt_rate * (accept - target_accept)}

  return with_checks(body, model, init_state=init_state)
