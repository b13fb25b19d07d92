r"""An exactly enumerable discrete latent-variable model: the oracle for score-function estimators.

Layer 3. L binary latents (2^L states, e.g. L = 8: 256), D binary pixels:

.. math::
   p(z) = \prod_l \mathrm{Bern}(z_l; \sigma(a_l)),\quad
   p(x|z) = \prod_d \mathrm{Bern}(x_d; \sigma(Wz + b)_d),\quad
   q(z|x) = \prod_l \mathrm{Bern}(z_l; \sigma(Ax + c)_l).

log p(x), the exact posterior p(z|x), the exact ELBO and the exact K-sample IWAE bound (by
enumerating K-tuples of states, feasible while 2^{LK} is small) are sums over states, so they and
their gradients with respect to every parameter are exact (``jax.grad`` of the sums). Every
score-function estimator (REINFORCE with each baseline, NVIL, VIMCO) is tested against them.

With ``posterior="exact"`` the model proposes from the exact posterior p(z|x) itself (by
enumeration at ``params``): every log-weight is then log p(x) and every K-sample bound equals it.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp

from jvae.models.contract import Joint, Proposal, data_of

Array = jax.Array

POSTERIORS = ("factorized", "exact")


def _bern(z: Array, logits: Array) -> Array:
  """Σ over the last axis of log Bern(z; σ(logits)), one softplus per term."""
  return jnp.sum(z * jax.nn.log_sigmoid(logits) + (1 - z) * jax.nn.log_sigmoid(-logits), -1)


def _bernoulli_kl(q_logits: Array, p_logits: Array) -> Array:
  """KL(Bern(σ(q)) ‖ Bern(σ(p))) per variable, from log-sigmoids (finite at ±1e4 logits)."""
  q1, q0 = jax.nn.log_sigmoid(q_logits), jax.nn.log_sigmoid(-q_logits)
  p1, p0 = jax.nn.log_sigmoid(p_logits), jax.nn.log_sigmoid(-p_logits)
  return jnp.exp(q1) * (q1 - p1) + jnp.exp(q0) * (q0 - p0)


def states(num_latents: int) -> Array:
  """All 2^L binary states, ``(2^L, L)`` float32, in lexicographic order."""
  return jnp.asarray(list(itertools.product((0.0, 1.0), repeat=num_latents)), jnp.float32)


class EnumerableBernoulli:
  """The enumerable binary model above; meets :class:`jvae.LatentModel` with ``log_q_score``.

  The factorized proposal also returns the closed-form KL(q ‖ p) (``kl``, and per latent
  ``kl_groups``), so ``jvae.elbo(model, estimator="score")`` with ``kl="analytic"`` applies.

  Args:
    num_latents: L (2^L states are enumerated; keep L ≤ 12).
    num_pixels: D.
    posterior: ``"factorized"`` (the amortized q above) or ``"exact"`` (sample the exact
      posterior: a check that every bound equals log p(x)).
    scale: standard deviation of the random initial weights.
  """

  def __init__(self, *, num_latents: int = 8, num_pixels: int = 6,
               posterior: str = "factorized", scale: float = 1.0):
    if posterior not in POSTERIORS:
      raise ValueError(f"posterior must be one of {POSTERIORS}, got {posterior!r}")
    if not 1 <= num_latents <= 12:
      raise ValueError(f"num_latents must be in [1, 12] to enumerate 2^L states, got "
                       f"{num_latents}")
    self.num_latents, self.num_pixels = num_latents, num_pixels
    self.posterior, self.scale = posterior, scale

  # -- the contract ------------------------------------------------------------------------------

  def init(self, key, batch) -> dict:
    del batch
    ks = jax.random.split(key, 6)
    lat, pix, s = self.num_latents, self.num_pixels, self.scale
    return {"prior_logits": s * jax.random.normal(ks[0], (lat,)),
            "W": s * jax.random.normal(ks[1], (pix, lat)),
            "b": s * jax.random.normal(ks[2], (pix,)),
            "A": s * jax.random.normal(ks[3], (lat, pix)),
            "c": s * jax.random.normal(ks[4], (lat,))}

  def q_logits(self, params, x: Array) -> Array:
    """The factorized q's logits σ⁻¹ q(z_l = 1|x), ``(batch, L)``."""
    return x @ params["A"].T + params["c"]

  def propose(self, params, key, batch, *, num_samples: int, density_params=None) -> Proposal:
    x = data_of(batch)
    if self.posterior == "exact":
      log_post = exact_log_posterior(self, params, x)  # (B, S)
      idx = jax.random.categorical(key, jax.lax.stop_gradient(log_post),
                                   shape=(num_samples, x.shape[0]))
      z = states(self.num_latents)[idx]
      d = params if density_params is None else density_params
      log_q = jnp.take_along_axis(exact_log_posterior(self, d, x), idx.T, axis=1).T
      log_q_score = jnp.take_along_axis(log_post, idx.T, axis=1).T
      return Proposal(z, log_q, log_q_score=log_q_score)
    logits = self.q_logits(params, x)
    u = jax.random.uniform(key, (num_samples, *logits.shape))
    z = jax.lax.stop_gradient((u < jax.nn.sigmoid(logits)).astype(jnp.float32))
    d_logits = logits if density_params is None else self.q_logits(density_params, x)
    kl_groups = _bernoulli_kl(logits, jnp.broadcast_to(params["prior_logits"], logits.shape))
    return Proposal(z, _bern(z, d_logits), kl=jnp.sum(kl_groups, -1), kl_groups=kl_groups,
                    log_q_score=_bern(z, logits))

  def log_joint(self, params, batch, z: Array) -> Joint:
    x = data_of(batch)
    log_lik = _bern(x, z @ params["W"].T + params["b"])
    log_prior = _bern(z, jnp.broadcast_to(params["prior_logits"], z.shape))
    return Joint(log_lik, log_prior)


def _log_joint_states(model: EnumerableBernoulli, params, x: Array) -> Array:
  """log p(x, z) for every state z, ``(batch, 2^L)``."""
  s = states(model.num_latents)[:, None]  # (S, 1, L)
  joint = model.log_joint(params, x, jnp.broadcast_to(s, (s.shape[0], x.shape[0], s.shape[2])))
  return (joint.log_lik + joint.log_prior).T


def exact_log_marginal(model: EnumerableBernoulli, params, x: Array) -> Array:
  """log p(x) = logsumexp_z log p(x, z), ``(batch,)``."""
  return jax.scipy.special.logsumexp(_log_joint_states(model, params, x), axis=1)


def exact_log_posterior(model: EnumerableBernoulli, params, x: Array) -> Array:
  """log p(z|x) for every state, ``(batch, 2^L)``."""
  lj = _log_joint_states(model, params, x)
  return lj - jax.scipy.special.logsumexp(lj, axis=1, keepdims=True)


def _log_q_states(model: EnumerableBernoulli, params, x: Array) -> Array:
  """log q(z|x) for every state, ``(batch, 2^L)`` (factorized posterior)."""
  s = states(model.num_latents)  # (S, L)
  logits = model.q_logits(params, x)  # (B, L)
  return _bern(s[None], logits[:, None])


def exact_elbo(model: EnumerableBernoulli, params, x: Array) -> Array:
  r"""Σ_z q(z|x) [log p(x, z) − log q(z|x)], ``(batch,)``; its ``jax.grad`` is exact."""
  log_q = _log_q_states(model, params, x)
  return jnp.sum(jnp.exp(log_q) * (_log_joint_states(model, params, x) - log_q), axis=1)


def exact_iwae(model: EnumerableBernoulli, params, x: Array, num_samples: int) -> Array:
  r"""E_{z_{1:K} ~ q}[log (1/K) Σ_k w_k] by enumerating all (2^L)^K tuples, ``(batch,)``.

  Feasible while 2^{LK} is at most about 10^5 (e.g. L = 4 with K ≤ 4); its ``jax.grad`` is the
  exact gradient of the IWAE_K bound.
  """
  num_states = 2 ** model.num_latents
  if num_states ** num_samples > 2 ** 17:
    raise ValueError(f"exact_iwae enumerates (2^L)^K = {num_states}^{num_samples} tuples; "
                     "keep it at most 2^17 (fewer latents or samples)")
  log_q = _log_q_states(model, params, x)  # (B, S)
  log_w = _log_joint_states(model, params, x) - log_q
  tuples = jnp.asarray(list(itertools.product(range(num_states), repeat=num_samples)))  # (T, K)
  lw = log_w[:, tuples]  # (B, T, K)
  log_prob = jnp.sum(log_q[:, tuples], axis=-1)  # (B, T)
  bound = jax.scipy.special.logsumexp(lw, axis=-1) - math.log(num_samples)
  return jnp.sum(jnp.exp(log_prob) * bound, axis=1)
