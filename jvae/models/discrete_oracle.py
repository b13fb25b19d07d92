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

With ``relaxation="concrete"`` (Maddison et al. 2017; Jang et al. 2017) the same parameters define a
relaxed model: y ~ BinaryConcrete(Ax + c, τ) in logit space under q, y ~ BinaryConcrete(a, τ) under
the prior, and p(x|y) = Bern(σ(Wσ(y) + b)). Its ``kl="sample"`` ELBO is a bound of that relaxed
model; its ``kl="analytic"`` objective (with ``discrete_kl=True``: relaxed reconstruction minus the
discrete KL, the Gumbel-softmax VAE objective of Jang et al.) tends to the discrete ELBO as τ → 0,
which the tests check against :func:`exact_elbo`. ``"straight_through"`` feeds the decoder the hard
1[y > 0] with the gradient of σ(y) (biased).
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp

from jvae.distributions import discrete as _discrete
from jvae.models.contract import Joint, Proposal, data_of

Array = jax.Array

POSTERIORS = ("factorized", "exact")
RELAXATIONS = (None, "concrete", "straight_through")


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
    relaxation: None (discrete), ``"concrete"`` or ``"straight_through"`` (module doc).
    temperature: τ > 0 of the relaxation (a float or a traced scalar).
    discrete_kl: with a relaxation, return the discrete KL as ``Proposal.kl`` (for
      ``kl="analytic"``, Jang et al.'s objective, which is not a bound); off by default.
  """

  def __init__(self, *, num_latents: int = 8, num_pixels: int = 6,
               posterior: str = "factorized", scale: float = 1.0, relaxation: str | None = None,
               temperature=1.0, discrete_kl: bool = False):
    if posterior not in POSTERIORS:
      raise ValueError(f"posterior must be one of {POSTERIORS}, got {posterior!r}")
    if relaxation not in RELAXATIONS:
      raise ValueError(f"relaxation must be one of {RELAXATIONS}, got {relaxation!r}")
    if relaxation is not None and posterior != "factorized":
      raise ValueError("a relaxation needs posterior='factorized'")
    self.relaxation, self.temperature = relaxation, temperature
    self.discrete_kl = discrete_kl
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

  def at_temperature(self, temperature) -> EnumerableBernoulli:
    """The same model at relaxation temperature τ (the trainer anneals through this)."""
    if self.relaxation is None:
      raise TypeError("at_temperature: this EnumerableBernoulli has no relaxation")
    return EnumerableBernoulli(num_latents=self.num_latents, num_pixels=self.num_pixels,
                               scale=self.scale, relaxation=self.relaxation,
                               temperature=temperature, discrete_kl=self.discrete_kl)

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
    prior_logits = jnp.broadcast_to(params["prior_logits"], logits.shape)
    if self.relaxation is not None:
      d_logits = logits if density_params is None else self.q_logits(density_params, x)
      y = _discrete.binary_concrete_sample(key, logits, self.temperature,
                                           num_samples=num_samples)
      log_q = _discrete.binary_concrete_log_prob(y, d_logits, self.temperature, event_ndims=1)
      if not self.discrete_kl:
        return Proposal(y, log_q)
      kl_groups = _bernoulli_kl(logits, prior_logits)
      return Proposal(y, log_q, kl=jnp.sum(kl_groups, -1), kl_groups=kl_groups)
    u = jax.random.uniform(key, (num_samples, *logits.shape))
    z = jax.lax.stop_gradient((u < jax.nn.sigmoid(logits)).astype(jnp.float32))
    d_logits = logits if density_params is None else self.q_logits(density_params, x)
    kl_groups = _bernoulli_kl(logits, prior_logits)
    return Proposal(z, _bern(z, d_logits), kl=jnp.sum(kl_groups, -1), kl_groups=kl_groups,
                    log_q_score=_bern(z, logits))

  def log_joint(self, params, batch, z: Array) -> Joint:
    x = data_of(batch)
    prior_logits = jnp.broadcast_to(params["prior_logits"], z.shape)
    if self.relaxation is not None:
      soft = jax.nn.sigmoid(z)
      h = (soft if self.relaxation == "concrete"
           else _discrete.straight_through(_discrete.hard_bernoulli(z), soft))
      log_prior = _discrete.binary_concrete_log_prob(z, prior_logits, self.temperature,
                                                     event_ndims=1)
      return Joint(_bern(x, h @ params["W"].T + params["b"]), log_prior)
    log_lik = _bern(x, z @ params["W"].T + params["b"])
    return Joint(log_lik, _bern(z, prior_logits))


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
