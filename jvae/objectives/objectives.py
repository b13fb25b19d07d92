"""Objectives: bind a model to a bound, giving a pure ``f(params, key, x) -> Array[batch]``.

Layer 4.

Each factory closes over static configuration (keyword-only) and returns a pure function of
``(params, key, x)``: ``params`` from ``model.init``, ``key`` a PRNG key, ``x`` of shape
``(batch, *event)``. The result has shape ``(batch,)``, higher is better, and ``jax.jit``,
``jax.vmap`` and ``jax.grad`` apply to it directly. Every objective also accepts an optional
keyword ``beta`` (a traced scalar is fine) that weights the prior/posterior part of each log-weight,
log w = log p(x|z) + β(log p(z) − log q(z|x)), for KL warm-up; β = 1 is the bound itself.

Gradient estimators (``estimator=``):
  * ``"reparam"``: the standard reparameterization gradient (Kingma & Welling 2014).
  * ``"stl"``: sticking the landing (Roeder et al. 2017): log q(z|x) is evaluated with the
    variational parameters held constant, dropping the zero-mean score term.
  * ``"dreg"``: doubly-reparameterized gradients (Tucker et al. 2018): the encoder gets
    Σ_k w̃_k² ∂log w_k/∂z_k ∂z_k/∂φ, the decoder the usual Σ_k w̃_k ∇_θ log w_k. For a one-sample
    average (the ELBO) it coincides with STL.
The value returned is always the bound; only the gradient differs.
"""

from __future__ import annotations

import math
from typing import NamedTuple
from collections.abc import Callable

import distrax
import jax
import jax.numpy as jnp

from jvae.bounds import log_weights as _bounds
from jvae.distributions.kl import analytic_kl, kl_per_dim
from jvae.models.vae import VAE
from jvae.distributions.posteriors import FullCovarianceGaussian
from jvae.bounds.stabilizers import free_bits_kl

Array = jax.Array
Objective = Callable[..., Array]

ESTIMATORS = ("reparam", "stl", "dreg")
KL_OPTIONS = ("analytic", "sample")

_stop = jax.lax.stop_gradient


def _tree_stop(tree):
  return jax.tree_util.tree_map(_stop, tree)


def _stopped_posterior(model: VAE, params, x: Array, q):
  """q(z|x) with its variational parameters held constant (for STL and DReG).

  ``tree_map(stop_gradient, q)`` is not enough in general: distrax's ``MultivariateNormalDiag``
  keeps methods bound to its scale as static pytree data, so its ``log_prob`` would still reach
  the live scale. Known Gaussians are rebuilt from stopped parameters; any other distribution is
  re-encoded from stopped params (one extra encoder forward pass, correct for every encoder).
  """
  if type(q) is distrax.MultivariateNormalDiag:
    return distrax.MultivariateNormalDiag(_stop(q.loc), _stop(q.scale_diag))
  if type(q) is FullCovarianceGaussian:
    return FullCovarianceGaussian(_stop(q.loc), _stop(q.scale_diag), _stop(q.bijector.lower))
  return model.apply(_tree_stop(params), x, method=VAE.encode)


def check_key(key) -> None:
  """Raise a TypeError at trace time unless ``key`` is a PRNG key (typed, or raw uint32[2])."""
  dtype = getattr(key, "dtype", None)
  shape = getattr(key, "shape", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    if shape == ():
      return
  elif dtype == jnp.uint32 and shape == (2,):
    return
  got = f"{dtype}{list(shape)}" if dtype is not None else type(key).__name__
  raise TypeError(
      "key must be a single PRNG key (jax.random.key(seed), or a raw jax.random.PRNGKey of "
      f"uint32[2]); got {got}. To use many keys, jax.vmap over them.")


def _check_num_samples(num_samples, name="num_samples") -> int:
  if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
    raise ValueError(f"{name} must be an integer >= 1, got {num_samples!r}")
  return num_samples


def _check_estimator(estimator: str, allowed=ESTIMATORS) -> str:
  if estimator not in allowed:
    raise ValueError(f"unknown estimator {estimator!r}; expected one of {allowed}")
  return estimator


def _check_model(model) -> None:
  if not isinstance(model, VAE):
    raise TypeError(f"model must be a jvae.VAE, got {type(model).__name__}")


class LogWeights(NamedTuple):
  """Log-weights of K samples, shape ``(K, batch)``, with estimator-specific gradient paths.

  ``value``: gradient of the standard estimator (reparam) or STL, through both θ and φ.
  ``theta``: same values, gradient only into the decoder/prior parameters θ (z held fixed).
  ``phi``: same values, gradient only into φ through z, with log q's parameters held fixed.
  For ``reparam``/``stl`` all three are the same array.
  """

  value: Array
  theta: Array
  phi: Array


def sample_log_weights(model: VAE, params, key, x, num_samples: int, *,
                       estimator: str = "reparam", beta=1.0, split: bool = False) -> LogWeights:
  """Draw z_k ~ q(z|x), sample axis first; log w_k = log p(x|z_k) + β(log p(z_k) − log q(z_k|x)).

  Args:
    model, params, key, x: as for any objective.
    num_samples: K.
    estimator: ``"reparam"`` keeps the score term of log q; ``"stl"``/``"dreg"`` evaluate log q
      with the variational parameters held constant (Roeder et al. 2017).
    beta: weight of log p(z) − log q(z|x) (KL warm-up).
    split: return separate θ and φ gradient paths (always on for ``"dreg"``). Costs a second
      decoder pass.
  Returns:
    :class:`LogWeights` of shape ``(K, batch)``.
  """
  q = model.apply(params, x, method=VAE.encode)
  z, log_q = _draw(q, key, num_samples)
  prior = model.prior_distribution(z.shape[-1])

  def log_joint(p, z):
    px = model.apply(p, z, method=VAE.decode)
    if tuple(px.event_shape) != tuple(x.shape[1:]):
      raise ValueError(f"the decoder's event shape {tuple(px.event_shape)} does not match "
                       f"x of shape {tuple(x.shape)}")
    return px.log_prob(x), prior.log_prob(z)

  if estimator != "reparam":
    log_q = _stopped_posterior(model, params, x, q).log_prob(z)
  axis = (lambda a: a[None]) if num_samples == 1 else (lambda a: a)
  if not (split or estimator == "dreg"):
    log_lik, log_pz = log_joint(params, z)
    lw = axis(log_lik + beta * (log_pz - log_q))
    return LogWeights(lw, lw, lw)
  log_lik_t, log_pz_t = log_joint(params, _stop(z))
  lw_theta = axis(log_lik_t + beta * (log_pz_t - _stop(log_q)))
  log_lik_p, log_pz_p = log_joint(_tree_stop(params), z)
  lw_phi = axis(log_lik_p + beta * (log_pz_p - log_q))
  return LogWeights(_stop(lw_theta), lw_theta, lw_phi)


def _draw(q, key, num_samples: int):
  """z and log q(z|x) with the sample axis first; for K = 1 without it, ``(batch, d)``.

  The same random numbers either way. Dropping a size-1 sample axis spares XLA the transposes it
  adds to the decoder's weight gradients for ``(1, batch, ·)`` activations (~4% of a step).
  """
  if num_samples == 1:
    return q.sample_and_log_prob(seed=key)
  return q.sample_and_log_prob(seed=key, sample_shape=(num_samples,))


def _weighted(lw_weights: Array, lw_grad: Array, axis: int, power: int) -> Array:
  """Σ_k stop(w̃_k)^power · lw_grad_k: a surrogate whose gradient is the (DReG) IWAE gradient."""
  w = _stop(jax.nn.softmax(lw_weights, axis=axis))
  return jnp.sum(w ** power * lw_grad, axis=axis)


def _with_surrogate(value: Array, surrogate: Array) -> Array:
  """The value of ``value`` with the gradient of ``surrogate``."""
  return _stop(value) + surrogate - _stop(surrogate)


def _dreg_iwae(lw: LogWeights) -> Array:
  """IWAE value with DReG gradients: θ gets Σ w̃ ∇log w, φ gets Σ w̃² ∂log w/∂z ∂z/∂φ."""
  sur = _weighted(lw.theta, lw.theta, 0, 1) + _weighted(lw.theta, lw.phi, 0, 2)
  return _with_surrogate(_bounds.iwae(lw.theta), sur)


def _with_checks(model, fn):
  """Wrap an objective body with the input checks common to all objectives."""

  def objective(params, key, x, *, beta=1.0):
    check_key(key)
    x = jnp.asarray(x) if not hasattr(x, "shape") else x
    return fn(params, key, x, beta)

  return objective


def elbo(model: VAE, *, num_samples: int = 1, kl: str = "analytic",
         estimator: str = "reparam", free_bits: float | None = None,
         free_bits_groups: int | None = None) -> Objective:
  r"""The evidence lower bound, ELBO = E_q[log p(x|z)] − KL(q(z|x) ‖ p(z)) ≤ log p(x).

  Kingma & Welling (2014), Eqs. 3 and 7; ELBO = log p(x) − KL(q(z|x) ‖ p(z|x)).

  Args:
    model: a :class:`jvae.VAE`.
    num_samples: K ≥ 1 samples averaged for the expectation.
    kl: ``"analytic"`` uses the closed-form KL (an error when the pair has none, e.g. IAF);
      ``"sample"`` the MC estimate log q(z|x) − log p(z), i.e. the mean of log-weights.
    estimator: ``"reparam"``, ``"stl"`` or ``"dreg"`` (= STL here); the latter two need
      ``kl="sample"``.
    free_bits: λ in nats; if set, the KL is replaced by Σ_g max(λ, E_batch[KL_g]) over
      ``free_bits_groups`` groups of latent dimensions (Kingma et al. 2016). Then the value is the
      free-bits training objective, not a bound: evaluate with plain ``elbo``.
    free_bits_groups: number of groups (default: one per latent dimension).

  Returns:
    ``f(params, key, x, *, beta=1.0) -> Array[batch]``.
  """
  _check_model(model)
  _check_num_samples(num_samples)
  _check_estimator(estimator)
  if kl not in KL_OPTIONS:
    raise ValueError(f"unknown kl option {kl!r}; expected one of {KL_OPTIONS}")
  if estimator != "reparam" and kl == "analytic":
    raise ValueError(f"estimator={estimator!r} drops the score term of log q(z|x), which needs "
                     "kl='sample'; the analytic KL has no such term")
  if free_bits is not None and free_bits < 0:
    raise ValueError(f"free_bits must be >= 0 nats, got {free_bits}")
  est = "stl" if estimator == "dreg" else estimator  # for a plain average DReG is STL

  def body(params, key, x, beta):
    if free_bits is None and kl == "sample":
      lw = sample_log_weights(model, params, key, x, num_samples, estimator=est, beta=beta)
      return _bounds.elbo(lw.value)
    q = model.apply(params, x, method=VAE.encode)
    z, _ = _draw(q, key, num_samples)
    prior = model.prior_distribution(z.shape[-1])
    log_lik = model.apply(params, z, method=VAE.decode).log_prob(x)
    if num_samples > 1:
      log_lik = jnp.mean(log_lik, axis=0)
    if free_bits is None:
      return log_lik - beta * analytic_kl(q, prior)
    if kl == "analytic":
      per_dim = kl_per_dim(q, prior)
    else:
      qs = _stopped_posterior(model, params, x, q) if est == "stl" else q
      per_dim = _factorized_log_prob(qs, z) - _factorized_log_prob(prior, z)
      if num_samples > 1:
        per_dim = jnp.mean(per_dim, axis=0)
    groups = free_bits_groups or per_dim.shape[-1]
    return log_lik - beta * free_bits_kl(per_dim, lam=free_bits, num_groups=groups)

  return _with_checks(model, body)


def _factorized_log_prob(dist, z: Array) -> Array:
  """Per-dimension log N(z_j; μ_j, σ_j²) of a diagonal Gaussian; shape ``z.shape``."""
  kl_per_dim(dist, dist)  # raises a clear error unless dist is a diagonal Gaussian
  scaled = (z - dist.loc) / dist.scale_diag
  return -0.5 * jnp.square(scaled) - jnp.log(dist.scale_diag) - 0.5 * math.log(2 * math.pi)


def iwae(model: VAE, *, num_samples: int, estimator: str = "reparam") -> Objective:
  r"""The importance-weighted bound IWAE_K = E[log (1/K) Σ_k p(x, z_k)/q(z_k|x)].

  Burda et al. (2015), Eq. 8.

  ELBO = IWAE_1 ≤ IWAE_K ≤ IWAE_{K+1} ≤ log p(x).

  Args:
    model: a :class:`jvae.VAE`.
    num_samples: K ≥ 1.
    estimator: ``"reparam"`` (standard IWAE gradient), ``"stl"`` (biased for K > 1, see Tucker et
      al. 2018) or ``"dreg"``.
  Returns:
    ``f(params, key, x, *, beta=1.0) -> Array[batch]``.
  """
  _check_model(model)
  _check_num_samples(num_samples)
  _check_estimator(estimator)

  def body(params, key, x, beta):
    lw = sample_log_weights(model, params, key, x, num_samples, estimator=estimator, beta=beta)
    if estimator == "dreg":
      return _dreg_iwae(lw)
    return _bounds.iwae(lw.value)

  return _with_checks(model, body)


def log_marginal(model: VAE, *, num_samples: int = 5000, chunk_size: int = 250,
                 return_stderr: bool = False) -> Objective:
  r"""Importance-sampled estimate of log p(x) = log E_q[p(x, z)/q(z|x)] with K samples.

  Samples are drawn ``chunk_size`` at a time inside a ``lax.scan`` with a running log-sum-exp, so
  memory is bounded by ``chunk_size × batch`` whatever ``num_samples`` is (Rezende et al. 2014,
  App. E; Burda et al. 2015, Sec. 5). The estimate equals IWAE_K and is consistent as K → ∞.

  Args:
    model: a :class:`jvae.VAE`.
    num_samples: K ≥ 1 (the standard protocol uses 5000).
    chunk_size: samples per step of the scan (clipped to K).
    return_stderr: also return the Monte-Carlo standard error of the estimate, by the delta
      method: sd(w) / (√K · mean(w)).
  Returns:
    ``f(params, key, x) -> Array[batch]``, or ``(Array[batch], Array[batch])`` with the standard
    error.
  """
  _check_model(model)
  _check_num_samples(num_samples)
  _check_num_samples(chunk_size, "chunk_size")
  chunk = min(chunk_size, num_samples)
  n_chunks = -(-num_samples // chunk)

  def body(params, key, x, beta):
    q = model.apply(params, x, method=VAE.encode)
    prior = model.prior_distribution(q.event_shape[-1])

    def step(carry, inputs):
      m, s1, s2 = carry
      start = inputs * chunk
      k = jax.random.fold_in(key, inputs)
      z, log_q = q.sample_and_log_prob(seed=k, sample_shape=(chunk,))
      log_lik = model.apply(params, z, method=VAE.decode).log_prob(x)
      lw = log_lik + beta * (prior.log_prob(z) - log_q)
      valid = (start + jnp.arange(chunk)) < num_samples
      lw = jnp.where(valid[:, None], lw, -jnp.inf)
      m_new = jnp.maximum(m, jnp.max(lw, axis=0))
      s1 = s1 * jnp.exp(m - m_new) + jnp.sum(jnp.exp(lw - m_new), axis=0)
      s2 = s2 * jnp.exp(2 * (m - m_new)) + jnp.sum(jnp.exp(2 * (lw - m_new)), axis=0)
      return (m_new, s1, s2), None

    batch = x.shape[0]
    init = (jnp.full((batch,), -jnp.inf), jnp.zeros((batch,)), jnp.zeros((batch,)))
    (m, s1, s2), _ = jax.lax.scan(step, init, jnp.arange(n_chunks))
    value = m + jnp.log(s1) - jnp.log(float(num_samples))
    if not return_stderr:
      return value
    mean = s1 / num_samples
    var = jnp.maximum(s2 / num_samples - jnp.square(mean), 0.0)
    var = var * num_samples / max(num_samples - 1, 1)
    stderr = jnp.sqrt(var / num_samples) / mean
    return value, stderr

  return _with_checks(model, body)


def renyi(model: VAE, *, alpha: float, num_samples: int, estimator: str = "reparam") -> Objective:
  r"""Variational Rényi bound L_α (Li & Turner 2016): α = 0 is IWAE_K, α → 1 the ELBO.

  Args:
    alpha: the order α ≥ 0 (α < 0 is not a lower bound and is rejected).
    num_samples: K ≥ 1.
    estimator: ``"reparam"`` or ``"stl"``.
  """
  _check_model(model)
  _check_num_samples(num_samples)
  _check_estimator(estimator, ("reparam", "stl"))
  if alpha < 0:
    raise ValueError(f"renyi alpha must be >= 0 for a lower bound, got {alpha}")

  def body(params, key, x, beta):
    lw = sample_log_weights(model, params, key, x, num_samples, estimator=estimator, beta=beta)
    return _bounds.renyi(lw.value, alpha)

  return _with_checks(model, body)


def _grouped(lw: Array, num_groups: int) -> Array:
  return lw.reshape(num_groups, lw.shape[0] // num_groups, *lw.shape[1:])


def miwae(model: VAE, *, num_groups: int, num_samples: int,
          estimator: str = "reparam") -> Objective:
  r"""MIWAE(M, K): the average of M independent IWAE_K bounds (Rainforth et al. 2018).

  Args:
    num_groups: M ≥ 1.
    num_samples: K ≥ 1 samples per group (M·K in all).
    estimator: ``"reparam"``, ``"stl"`` or ``"dreg"`` (DReG within each group).
  """
  _check_model(model)
  _check_num_samples(num_groups, "num_groups")
  _check_num_samples(num_samples)
  _check_estimator(estimator)
  total = num_groups * num_samples

  def body(params, key, x, beta):
    lw = sample_log_weights(model, params, key, x, total, estimator=estimator, beta=beta)
    if estimator != "dreg":
      return _bounds.miwae(_grouped(lw.value, num_groups))
    th, ph = _grouped(lw.theta, num_groups), _grouped(lw.phi, num_groups)
    sur = jnp.mean(_weighted(th, th, 1, 1) + _weighted(th, ph, 1, 2), axis=0)
    return _with_surrogate(_bounds.miwae(th), sur)

  return _with_checks(model, body)


def ciwae(model: VAE, *, num_samples: int, elbo_weight: float,
          estimator: str = "reparam") -> Objective:
  r"""CIWAE_β = β·ELBO + (1 − β)·IWAE_K on the same K samples (Rainforth et al. 2018).

  Args:
    num_samples: K ≥ 1.
    elbo_weight: β in [0, 1] (named so as not to clash with the warm-up ``beta``).
    estimator: ``"reparam"`` or ``"stl"``.
  """
  _check_model(model)
  _check_num_samples(num_samples)
  _check_estimator(estimator, ("reparam", "stl"))
  if not 0.0 <= elbo_weight <= 1.0:
    raise ValueError(f"ciwae elbo_weight must be in [0, 1], got {elbo_weight}")

  def body(params, key, x, beta):
    lw = sample_log_weights(model, params, key, x, num_samples, estimator=estimator, beta=beta)
    return _bounds.ciwae(lw.value, elbo_weight)

  return _with_checks(model, body)


def piwae(model: VAE, *, num_groups: int, num_samples: int,
          estimator: str = "reparam") -> Objective:
  r"""PIWAE(M, K) (Rainforth et al. 2018): the decoder follows IWAE_{M·K}, the encoder MIWAE(M, K).

  The value returned is IWAE_{M·K}; the encoder gradient is that of MIWAE(M, K), standard
  (``"reparam"``) or doubly reparameterized within each group (``"dreg"``).
  """
  _check_model(model)
  _check_num_samples(num_groups, "num_groups")
  _check_num_samples(num_samples)
  _check_estimator(estimator, ("reparam", "dreg"))
  total = num_groups * num_samples
  power = 2 if estimator == "dreg" else 1

  def body(params, key, x, beta):
    lw = sample_log_weights(model, params, key, x, total, estimator=estimator, beta=beta,
                            split=True)
    th, ph = _grouped(lw.theta, num_groups), _grouped(lw.phi, num_groups)
    sur = _weighted(lw.theta, lw.theta, 0, 1) + jnp.mean(_weighted(th, ph, 1, power), axis=0)
    return _with_surrogate(_bounds.iwae(lw.theta), sur)

  return _with_checks(model, body)
