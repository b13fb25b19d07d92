r"""Objectives: bind a model to a bound, giving a pure ``f(params, key, batch) -> Array[batch]``.

Layer 4.

Each factory takes any :class:`jvae.LatentModel` (``propose`` and ``log_joint``; ``jvae.VAE`` and
every model family in jvae meet it, and so does a researcher's own object with those methods),
closes over static configuration (keyword-only) and returns a pure function of
``(params, key, batch)``: ``params`` from ``model.init``, ``key`` a PRNG key, ``batch`` an array x
of shape ``(batch, *event)`` or a :class:`jvae.Batch`. The result has shape ``(batch,)``, higher
is better, and ``jax.jit``, ``jax.vmap`` and ``jax.grad`` apply to it directly. Every objective
also accepts an optional keyword ``beta`` (a traced scalar is fine) that weights the
prior/posterior part of each log-weight, log w = log p(x|z) + β(log p(z) − log q(z|x)), for KL
warm-up; β = 1 is the bound itself.

The estimator (``estimator="reparam" | "stl" | "dreg"``, see :mod:`jvae.objectives.log_weights`;
``"score" | "vimco"`` for discrete latents, see :mod:`jvae.objectives.score`) changes only the
gradient: the value returned is always the bound. Relaxed models (e.g. Concrete latents) take a
``temperature=`` keyword, passed to their ``at_temperature`` method, so the trainer can anneal it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jvae.bounds import log_weights as _bounds
from jvae.bounds.numerics import check_number
from jvae.bounds.stabilizers import free_bits_kl
from jvae.models.contract import check_batch, check_model
from jvae.objectives import score as _score
from jvae.objectives.log_weights import (
    PATHWISE,
    SCORE_FUNCTION,
    check_beta,
    check_estimator,
    check_gradient_paths,
    check_key,
    check_num_samples,
    sample_log_weights,
    tree_stop,
    weighted,
    with_surrogate,
)

Array = jax.Array
Objective = Callable[..., Array]

KL_OPTIONS = ("analytic", "sample")


def _at_temperature(model, temperature):
  """``model`` at relaxation temperature τ (its ``at_temperature`` method); τ=None: as is."""
  if temperature is None:
    return model
  method = getattr(model, "at_temperature", None)
  if not callable(method):
    raise TypeError(f"temperature= was given but {type(model).__name__} has no at_temperature "
                    "method (only relaxed models, e.g. jvae.DiscreteVAE(relaxation='concrete'), "
                    "have a temperature)")
  check_number(temperature, "temperature", minimum=0.0, strict=True)
  return method(temperature)


def with_checks(fn, model, *, init_state: Callable[[], Any] | None = None):
  """Wrap an objective body with the checks every objective has.

  ``fn(model, params, key, batch, beta) -> Array[batch]``; with ``init_state``, a stateful body
  ``fn(model, params, key, batch, beta, state) -> (Array[batch], new_state)`` (the score
  baselines' moving averages). The returned objective is
  ``f(params, key, batch, *, beta=1.0, temperature=None)``; a stateful one also has
  ``f.init_state()`` and ``f.with_state(params, key, batch, state, *, beta=1.0,
  temperature=None) -> (values, new_state)``, and a plain call uses the initial state.

  ``key`` must be one PRNG key; ``batch`` a floating-point array ``(batch, *event)`` with at
  least one example, or a :class:`jvae.Batch` of such an x with side fields of the same leading
  size; a concrete ``beta`` must be finite and ≥ 0; ``temperature`` (relaxed models only, e.g.
  annealed by the trainer) is passed to ``model.at_temperature``.
  """

  def prepare(key, batch, beta, temperature):
    check_key(key)
    if not hasattr(batch, "shape") and not hasattr(batch, "_fields"):
      batch = jnp.asarray(batch)
    check_batch(batch)
    check_beta(beta)
    return _at_temperature(model, temperature), batch

  if init_state is None:
    def objective(params, key, batch, *, beta=1.0, temperature=None):
      m, batch = prepare(key, batch, beta, temperature)
      return fn(m, params, key, batch, beta)

    return objective

  def with_state(params, key, batch, state, *, beta=1.0, temperature=None):
    m, batch = prepare(key, batch, beta, temperature)
    return fn(m, params, key, batch, beta, state)

  def stateful(params, key, batch, *, beta=1.0, temperature=None):
    return with_state(params, key, batch, init_state(), beta=beta, temperature=temperature)[0]

  stateful.init_state = init_state
  stateful.with_state = with_state
  return stateful


def _check_finite_nonneg(value, name: str) -> None:
  if value is not None and not (value >= 0 and math.isfinite(value)):
    raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _closed_form_kl(model, params, batch, proposal, groups: bool) -> Array:
  """The proposal's closed-form KL (per group with ``groups``), else the model's method."""
  value = proposal.kl_groups if groups else proposal.kl
  if value is not None:
    return value
  method = getattr(model, "analytic_kl_groups" if groups else "analytic_kl", None)
  if callable(method):
    return method(params, batch)
  what = "per-group KL (free bits)" if groups else "KL(q ‖ p)"
  raise ValueError(
      f"kl='analytic' needs the closed-form {what}, and {type(model).__name__} has none for "
      "this posterior and prior (e.g. an IAF posterior, a mixture prior, or a hierarchy, where "
      "the KL of one layer is not the KL of the whole q); use kl='sample'")


def _with_score_state(body, model, baseline):
  """A score-function body as an objective: stateful for the moving-average baselines."""
  if baseline is None:
    return with_checks(lambda *args: body(*args, None)[0], model)
  return with_checks(body, model, init_state=lambda: _score.initial_state(baseline))


def _sample_mean(a: Array, num_samples: int) -> Array:
  return a[0] if num_samples == 1 else jnp.mean(a, axis=0)


def elbo(model, *, num_samples: int = 1, kl: str = "analytic",
         estimator: str = "reparam", free_bits: float | None = None,
         free_bits_groups: int | None = None, baseline: str | None = None,
         baseline_decay: float = 0.9) -> Objective:
  r"""The evidence lower bound, ELBO = E_q[log p(x|z)] − KL(q(z|x) ‖ p(z)) ≤ log p(x).

  Kingma & Welling (2014), Eqs. 3 and 7; ELBO = log p(x) − KL(q(z|x) ‖ p(z|x)).

  Args:
    model: any :class:`jvae.LatentModel`.
    num_samples: K ≥ 1 samples averaged for the expectation.
    kl: ``"analytic"`` uses the model's closed-form KL (``Proposal.kl``; an error when it has
      none, e.g. an IAF posterior or a bottom-up hierarchy); ``"sample"`` the MC estimate
      log q(z|x) − log p(z), i.e. the mean of log-weights.
    estimator: ``"reparam"``, ``"stl"`` or ``"dreg"`` (= STL here); the latter two need
      ``kl="sample"``. For a model with discrete latents, ``"score"``: REINFORCE on the
      non-reparameterized sites (:mod:`jvae.objectives.score`), with either KL option; with
      ``kl="analytic"`` only log p(x|z) enters the learning signal.
    free_bits: λ in nats; if set, the KL is replaced by Σ_g max(λ, E_batch[KL_g]) over
      ``free_bits_groups`` groups of the model's KL groups (Kingma et al. 2016): latent
      dimensions for ``jvae.VAE``, layers for hierarchies. Then the value is the free-bits
      training objective, not a bound: evaluate with plain ``elbo``.
    free_bits_groups: number of contiguous groups (default: one per KL group of the model).
    baseline: for ``estimator="score"``: ``None``, ``"ema"`` (a moving average of the signal)
      or ``"nvil"`` (Mnih & Gregor 2014; needs :func:`jvae.with_baseline`). Those two make the
      objective stateful: ``f.init_state()`` and ``f.with_state(...)``, which the trainer uses.
    baseline_decay: the moving averages' decay α in [0, 1).

  Returns:
    ``f(params, key, batch, *, beta=1.0, temperature=None) -> Array[batch]``.
  """
  check_model(model)
  check_num_samples(num_samples)
  if estimator == "vimco":
    raise ValueError("estimator='vimco' is for the K-sample bounds (jvae.iwae, jvae.miwae); for "
                     "the elbo use estimator='score' with baseline='ema' or 'nvil'")
  check_estimator(estimator, (*PATHWISE, "score"))
  _score.check_baseline(model, baseline, estimator, baseline_decay)
  if kl not in KL_OPTIONS:
    raise ValueError(f"unknown kl option {kl!r}; expected one of {KL_OPTIONS}")
  if estimator == "score":
    if free_bits is not None:
      raise ValueError("free_bits is implemented for the pathwise estimators only; with "
                       "estimator='score' train the plain elbo (or warm up beta)")
    body = _score.elbo_body(
        num_samples=num_samples, kl=kl, baseline=baseline, decay=baseline_decay,
        closed_form_kl=lambda m, p, b, prop: _closed_form_kl(m, p, b, prop, groups=False))
    return _with_score_state(body, model, baseline)
  if estimator != "reparam" and kl == "analytic":
    raise ValueError(f"estimator={estimator!r} drops the score term of log q(z|x), which needs "
                     "kl='sample'; the analytic KL has no such term")
  _check_finite_nonneg(free_bits, "free_bits (nats)")
  if free_bits_groups is not None:
    check_num_samples(free_bits_groups, "free_bits_groups")
    if free_bits is None:
      raise ValueError("free_bits_groups is set but free_bits is not; give free_bits=λ too")
  est = "stl" if estimator == "dreg" else estimator  # for a plain average DReG is STL

  def body(model, params, key, batch, beta):
    if free_bits is None and kl == "sample":
      lw = sample_log_weights(model, params, key, batch, num_samples, estimator=est, beta=beta)
      return _bounds.elbo(lw.value)
    density = tree_stop(params) if est == "stl" else None
    proposal = model.propose(params, key, batch, num_samples=num_samples,
                             density_params=density)
    check_gradient_paths(model, proposal, est)
    joint = model.log_joint(params, batch, proposal.z)
    log_lik = _sample_mean(joint.log_lik, num_samples)
    if free_bits is None:
      return log_lik - beta * _closed_form_kl(model, params, batch, proposal, groups=False)
    if kl == "analytic":
      per_group = _closed_form_kl(model, params, batch, proposal, groups=True)
    else:
      if proposal.log_q_groups is None or joint.log_prior_groups is None:
        raise ValueError(f"free bits with kl='sample' needs per-group log q and log p(z) "
                         f"(Proposal.log_q_groups, Joint.log_prior_groups), which "
                         f"{type(model).__name__} does not return for this posterior/prior")
      per_group = _sample_mean(proposal.log_q_groups - joint.log_prior_groups, num_samples)
    groups = free_bits_groups or per_group.shape[-1]
    return log_lik - beta * free_bits_kl(per_group, lam=free_bits, num_latent_groups=groups)

  return with_checks(body, model)


def kl_groups(model, *, num_samples: int = 1) -> Objective:
  r"""The KL(q ‖ p) of each latent group (dimension or layer), per data point: a metric.

  Closed form where the model returns one with its proposal (``Proposal.kl_groups``, e.g. a
  factorized-Gaussian ``jvae.VAE``: one group per latent dimension), else the Monte-Carlo
  estimate E_q[log q_g − log p_g] over ``num_samples`` draws from the per-group log-densities
  (``Proposal.log_q_groups``, ``Joint.log_prior_groups``: one group per layer for
  ``HierarchicalVAE`` and ``LadderVAE``). For a layer l whose prior is conditional,
  p(z_l|z_{l+1}), the groups are the terms of KL(q(z) ‖ p(z)) in the chain rule, so they sum to
  the whole KL. Groups far below a nat are inactive (posterior collapse).

  Returns:
    ``f(params, key, batch) -> Array[batch, G]``.
  """
  check_model(model)
  check_num_samples(num_samples)

  def body(model, params, key, batch, beta):
    del beta
    proposal = model.propose(params, key, batch, num_samples=num_samples)
    if proposal.kl_groups is not None:
      return proposal.kl_groups
    joint = model.log_joint(params, batch, proposal.z)
    if proposal.log_q_groups is None or joint.log_prior_groups is None:
      raise ValueError(f"{type(model).__name__} returns no per-group KL for this posterior and "
                       "prior (Proposal.kl_groups, or log_q_groups with Joint.log_prior_groups)")
    return _sample_mean(proposal.log_q_groups - joint.log_prior_groups, num_samples)

  return with_checks(body, model)


def iwae(model, *, num_samples: int, estimator: str = "reparam", baseline: str | None = None,
         baseline_decay: float = 0.9) -> Objective:
  r"""The importance-weighted bound IWAE_K = E[log (1/K) Σ_k p(x, z_k)/q(z_k|x)].

  Burda et al. (2015), Eq. 8. ELBO = IWAE_1 ≤ IWAE_K ≤ IWAE_{K+1} ≤ log p(x).

  Args:
    model: any :class:`jvae.LatentModel`.
    num_samples: K ≥ 1.
    estimator: ``"reparam"`` (standard IWAE gradient), ``"stl"`` (biased for K > 1, see Tucker et
      al. 2018) or ``"dreg"``; for discrete latents ``"score"`` (signal L̂ for every sample,
      with ``baseline``) or ``"vimco"`` (Mnih & Rezende 2016; K ≥ 2).
    baseline, baseline_decay: for ``"score"``, as in :func:`elbo`.
  Returns:
    ``f(params, key, batch, *, beta=1.0, temperature=None) -> Array[batch]``.
  """
  check_model(model)
  check_num_samples(num_samples)
  check_estimator(estimator)
  if estimator in SCORE_FUNCTION:
    return _k_sample_score(model, 1, num_samples, estimator, baseline, baseline_decay)
  _score.check_baseline(model, baseline, estimator, baseline_decay)

  def body(model, params, key, batch, beta):
    lw = sample_log_weights(model, params, key, batch, num_samples, estimator=estimator,
                            beta=beta)
    if estimator == "dreg":
      sur = weighted(lw.theta, lw.theta, 0, 1) + weighted(lw.theta, lw.phi, 0, 2)
      return with_surrogate(_bounds.iwae(lw.theta), sur)
    return _bounds.iwae(lw.value)

  return with_checks(body, model)


def _reduced_log_weights(model, num_samples: int, estimator: str,
                         reduce: Callable[[Array], Array]) -> Objective:
  """The objective ``reduce(log_w)`` of K log-weights ``(K, batch)`` drawn with ``estimator``."""

  def body(model, params, key, batch, beta):
    lw = sample_log_weights(model, params, key, batch, num_samples, estimator=estimator,
                            beta=beta)
    return reduce(lw.value)

  return with_checks(body, model)


def renyi(model, *, alpha: float, num_samples: int, estimator: str = "reparam") -> Objective:
  r"""Variational Rényi bound L_α (Li & Turner 2016): α = 0 is IWAE_K, α → 1 the ELBO.

  Args:
    model: any :class:`jvae.LatentModel`.
    alpha: the order α ≥ 0 (α < 0 is not a lower bound and is rejected, and so is NaN).
    num_samples: K ≥ 1.
    estimator: ``"reparam"`` or ``"stl"``.
  """
  check_model(model)
  check_num_samples(num_samples)
  check_estimator(estimator, ("reparam", "stl"))
  if not alpha >= 0:
    raise ValueError(f"renyi alpha must be >= 0 for a lower bound, got {alpha}")

  return _reduced_log_weights(model, num_samples, estimator,
                              lambda lw: _bounds.renyi(lw, alpha=alpha))


def _k_sample_score(model, num_groups, num_samples, estimator, baseline, decay):
  _score.check_baseline(model, baseline, estimator, decay)
  if estimator == "vimco" and num_samples < 2:
    raise ValueError(f"estimator='vimco' needs num_samples >= 2 (sample k's baseline is built "
                     f"from the other samples), got num_samples={num_samples}")
  body = _score.k_sample_body(num_groups=num_groups, num_samples=num_samples,
                              estimator=estimator, baseline=baseline, decay=decay,
                              sample_log_weights=sample_log_weights)
  return _with_score_state(body, model, baseline)


def _grouped(lw: Array, num_groups: int) -> Array:
  return lw.reshape(num_groups, lw.shape[0] // num_groups, *lw.shape[1:])


def miwae(model, *, num_groups: int, num_samples: int, estimator: str = "reparam",
          baseline: str | None = None, baseline_decay: float = 0.9) -> Objective:
  r"""MIWAE(M, K): the average of M independent IWAE_K bounds (Rainforth et al. 2018).

  Args:
    model: any :class:`jvae.LatentModel`.
    num_groups: M ≥ 1 groups of samples (not latent groups: that is ``free_bits_groups``).
    num_samples: K ≥ 1 samples per group (M·K in all).
    estimator: ``"reparam"``, ``"stl"`` or ``"dreg"`` (DReG within each group); for discrete
      latents ``"score"`` or ``"vimco"`` (leave-one-out within each group, K ≥ 2).
    baseline, baseline_decay: for ``"score"``, as in :func:`elbo`.
  """
  check_model(model)
  check_num_samples(num_groups, "num_groups")
  check_num_samples(num_samples)
  check_estimator(estimator)
  if estimator in SCORE_FUNCTION:
    return _k_sample_score(model, num_groups, num_samples, estimator, baseline, baseline_decay)
  _score.check_baseline(model, baseline, estimator, baseline_decay)
  total = num_groups * num_samples

  def body(model, params, key, batch, beta):
    lw = sample_log_weights(model, params, key, batch, total, estimator=estimator, beta=beta)
    if estimator != "dreg":
      return _bounds.miwae(_grouped(lw.value, num_groups))
    th, ph = _grouped(lw.theta, num_groups), _grouped(lw.phi, num_groups)
    sur = jnp.mean(weighted(th, th, 1, 1) + weighted(th, ph, 1, 2), axis=0)
    return with_surrogate(_bounds.miwae(th), sur)

  return with_checks(body, model)


def ciwae(model, *, num_samples: int, elbo_weight: float,
          estimator: str = "reparam") -> Objective:
  r"""CIWAE_β = β·ELBO + (1 − β)·IWAE_K on the same K samples (Rainforth et al. 2018).

  Args:
    model: any :class:`jvae.LatentModel`.
    num_samples: K ≥ 1.
    elbo_weight: β in [0, 1] (named so as not to clash with the warm-up ``beta``).
    estimator: ``"reparam"`` or ``"stl"``.
  """
  check_model(model)
  check_num_samples(num_samples)
  check_estimator(estimator, ("reparam", "stl"))
  if not 0.0 <= elbo_weight <= 1.0:
    raise ValueError(f"ciwae elbo_weight must be in [0, 1], got {elbo_weight}")

  return _reduced_log_weights(model, num_samples, estimator,
                              lambda lw: _bounds.ciwae(lw, elbo_weight))


def piwae(model, *, num_groups: int, num_samples: int,
          estimator: str = "reparam") -> Objective:
  r"""PIWAE(M, K) (Rainforth et al. 2018): the decoder follows IWAE_{M·K}, the encoder MIWAE(M, K).

  The value returned is IWAE_{M·K}; the encoder gradient is that of MIWAE(M, K), standard
  (``"reparam"``) or doubly reparameterized within each group (``"dreg"``).
  """
  check_model(model)
  check_num_samples(num_groups, "num_groups")
  check_num_samples(num_samples)
  check_estimator(estimator, ("reparam", "dreg"))
  total = num_groups * num_samples
  power = 2 if estimator == "dreg" else 1

  def body(model, params, key, batch, beta):
    lw = sample_log_weights(model, params, key, batch, total, estimator=estimator, beta=beta,
                            split=True)
    th, ph = _grouped(lw.theta, num_groups), _grouped(lw.phi, num_groups)
    sur = weighted(lw.theta, lw.theta, 0, 1) + jnp.mean(weighted(th, ph, 1, power), axis=0)
    return with_surrogate(_bounds.iwae(lw.theta), sur)

  return with_checks(body, model)
