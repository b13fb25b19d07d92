r"""The importance-sampled log-marginal log p̂(x) with bounded memory (layer 4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jvae.models.contract import check_model, data_of
from jvae.objectives.log_weights import check_num_samples
from jvae.objectives.objectives import Objective, with_checks


@jax.custom_jvp
def _value_only(value):
  return value


@_value_only.defjvp
def _value_only_jvp(primals, tangents):
  del primals, tangents
  raise ValueError(
      "log_marginal of a model with discrete latents is an evaluation, not a differentiable "
      "objective: its pathwise gradient would lack the score-function term. Train with "
      "jvae.iwae(model, num_samples=K, estimator='vimco') or jvae.elbo(model, "
      "estimator='score'), and evaluate with log_marginal outside the differentiated function")


def log_marginal(model, *, num_samples: int = 5000, chunk_size: int = 250,
                 return_stderr: bool = False) -> Objective:
  r"""Importance-sampled estimate of log p(x) = log E_q[p(x, z)/q(z|x)] with K samples.

  Samples are drawn ``chunk_size`` at a time inside a ``lax.scan`` with a running log-sum-exp, so
  memory is bounded by ``chunk_size × batch`` whatever ``num_samples`` is (Rezende et al. 2014,
  App. E; Burda et al. 2015, Sec. 5). The estimate equals IWAE_K and is consistent as K → ∞.

  Args:
    model: any :class:`jvae.LatentModel`.
    num_samples: K ≥ 1 (the standard protocol uses 5000).
    chunk_size: samples per step of the scan (clipped to K).
    return_stderr: also return the Monte-Carlo standard error of each estimate, by the delta
      method: sd(w) / (√K · mean(w)). It is the error of one image's log p̂(x) over the draw of
      its K samples, not the spread of log p(x) over images.
  For a model with discrete latents (``Proposal.log_q_score``) the estimate is an evaluation
  only: differentiating it raises an error at trace time (its pathwise gradient would lack the
  score term; train with ``jvae.iwae(..., estimator="vimco")`` instead).

  Returns:
    ``f(params, key, batch) -> Array[batch]``, or ``(Array[batch], Array[batch])`` with the
    standard error.
  """
  check_model(model)
  check_num_samples(num_samples)
  check_num_samples(chunk_size, "chunk_size")
  chunk = min(chunk_size, num_samples)
  n_chunks = -(-num_samples // chunk)

  discrete = []

  def body(model, params, key, batch, beta):
    def step(carry, inputs):
      m, s1, s2 = carry
      start = inputs * chunk
      proposal = model.propose(params, jax.random.fold_in(key, inputs), batch,
                               num_samples=chunk)
      discrete.append(proposal.log_q_score is not None)
      joint = model.log_joint(params, batch, proposal.z)
      lw = joint.log_lik + beta * (joint.log_prior - proposal.log_q)
      valid = (start + jnp.arange(chunk)) < num_samples
      lw = jnp.where(valid[:, None], lw, -jnp.inf)
      m_new = jnp.maximum(m, jnp.max(lw, axis=0))
      s1 = s1 * jnp.exp(m - m_new) + jnp.sum(jnp.exp(lw - m_new), axis=0)
      s2 = s2 * jnp.exp(2 * (m - m_new)) + jnp.sum(jnp.exp(2 * (lw - m_new)), axis=0)
      return (m_new, s1, s2), None

    n = data_of(batch).shape[0]
    init = (jnp.full((n,), -jnp.inf), jnp.zeros((n,)), jnp.zeros((n,)))
    (m, s1, s2), _ = jax.lax.scan(step, init, jnp.arange(n_chunks))
    value = m + jnp.log(s1) - jnp.log(float(num_samples))
    if discrete[-1]:
      value = _value_only(value)
    if not return_stderr:
      return value
    mean = s1 / num_samples
    var = jnp.maximum(s2 / num_samples - jnp.square(mean), 0.0)
    var = var * num_samples / max(num_samples - 1, 1)
    stderr = jnp.sqrt(var / num_samples) / mean
    return value, stderr

  return with_checks(body, model)
