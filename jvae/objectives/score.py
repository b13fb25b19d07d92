r"""Score-function estimators for models with discrete latents: REINFORCE, NVIL, VIMCO (layer 4).

A model whose proposal carries ``log_q_score`` (the log q of its non-reparameterized sites, at
live params with z stopped; see :class:`jvae.Proposal`) has no pathwise gradient through those
sites. For f(z) the per-sample objective (a log-weight, or log p(x|z) beside a closed-form KL),

.. math::
   \nabla_\phi \mathbb E_{q_\phi}[f(z)]
   = \mathbb E_q\big[\nabla_\phi f(z) + (f(z) - b)\,\nabla_\phi \log q_\phi(z)\big]

for any b that does not depend on z (Williams 1992). Every estimator here returns the bound's
value and has a surrogate gradient of that form; continuous sites of a mixed model keep their
reparameterized path inside ∇f.

Estimators and baselines:
  * ``estimator="score"``, ``baseline=None``: plain REINFORCE, b = 0.
  * ``baseline="ema"``: b = c, an exponential moving average of the learning signal kept in the
    objective's state (``objective.init_state()``; the trainer keeps it in
    ``TrainState.objective_state``).
  * ``baseline="nvil"``: NVIL (Mnih & Gregor 2014): b = c + C_ψ(x), an input-dependent baseline
    that is part of ``params`` (:func:`jvae.with_baseline`) and is trained by its own squared
    error −½(f − c − C_ψ(x))² (added to the surrogate with value zero), with the centred signal
    divided by max(1, √v), v its running variance.
  * ``estimator="vimco"`` (K-sample bounds): VIMCO (Mnih & Rezende 2016): sample k's signal is
    L̂ − L̂_{-k}, with the leave-one-out bound as baseline; no state.

For the IWAE bound with ``"score"`` the signal of every sample is the bound L̂ itself (the
gradient of log (1/K) Σ_k w_k is Σ_k w̃_k ∇ log w_k + L̂ Σ_k ∇ log q(z_k)); VIMCO replaces it by
the per-sample L̂ − L̂_{-k}.

NVIL's variance normalisation divides the score term by max(1, √v), a positive number fixed
before the step's samples are drawn: the encoder's gradient is then an unbiased estimate of the
exact gradient divided by it (a per-step rescaling of the encoder's learning rate, as in the
paper), the decoder's is unbiased for the exact gradient.

The moving averages are updated from the state the step was given, and the baseline used for
a step is the state *before* that step's update, so b never depends on the step's own samples
and every estimator stays unbiased (NVIL's Algorithm 1 updates c first; with a batch of B
points that biases the step by O(1/B)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jvae.bounds import log_weights as _bounds
from jvae.bounds.control_variates import (
    MovingAverage,
    moving_average_init,
    moving_average_update,
    normalize_signal,
    vimco_signals,
)
from jvae.objectives.log_weights import check_gradient_paths, with_surrogate

Array = jax.Array

BASELINES = (None, "ema", "nvil")

_stop = jax.lax.stop_gradient


def check_baseline(model, baseline, estimator: str, decay: float) -> None:
  """Raise a ValueError for a baseline the estimator does not take or the model cannot give."""
  if baseline not in BASELINES:
    raise ValueError(f"unknown baseline {baseline!r}; expected one of {BASELINES}")
  if baseline is not None and estimator != "score":
    raise ValueError(f"baseline={baseline!r} is for estimator='score'; estimator={estimator!r} "
                     + ("has its own leave-one-out baseline" if estimator == "vimco"
                        else "has no score term to baseline"))
  if baseline == "nvil" and not callable(getattr(model, "baseline", None)):
    raise ValueError(f"baseline='nvil' needs a learned input-dependent baseline C_ψ(x), and "
                     f"{type(model).__name__} has no baseline(params, batch) method; wrap the "
                     "model: jvae.with_baseline(model)")
  if not (isinstance(decay, (int, float)) and 0.0 <= decay < 1.0):
    raise ValueError(f"baseline_decay must be a number in [0, 1), got {decay!r}")


def initial_state(baseline) -> MovingAverage | None:
  """The state a step with this baseline starts from (None when it needs none)."""
  return None if baseline is None else moving_average_init()


def baselined(model, params, batch, signal: Array, state, *, baseline, decay: float):
  """The coefficients of ∇ log q, the next state, and the learned baseline's training term.

  Args:
    signal: the learning signal, stopped, ``(K, batch)`` or ``(batch,)``.
    state: :class:`jvae.bounds.control_variates.MovingAverage` or None.
  Returns:
    ``(coefficients like signal, new_state, extra (batch,))``: ``extra`` has value zero and the
    gradient of −½(signal − c − C_ψ(x))² for the NVIL baseline's parameters.
  """
  signal = _stop(signal)
  zero = jnp.zeros(signal.shape[-1], signal.dtype)
  if baseline is None:
    return signal, state, zero
  if baseline == "ema":
    return signal - state.mean, moving_average_update(state, signal, decay=decay), zero
  learned = model.baseline(params, batch)  # (batch,)
  centred = signal - _stop(learned)
  error = _stop(signal - state.mean) - learned
  mse = -0.5 * jnp.square(error)
  mse = jnp.mean(mse, axis=0) if mse.ndim == 2 else mse
  return (normalize_signal(centred, state), moving_average_update(state, centred, decay=decay),
          mse - _stop(mse))


def elbo_body(*, num_samples: int, kl: str, baseline, decay: float, closed_form_kl):
  """The ELBO with a score-function gradient: ``body(model, params, key, batch, beta, state)``."""

  def body(model, params, key, batch, beta, state):
    proposal = model.propose(params, key, batch, num_samples=num_samples)
    check_gradient_paths(model, proposal, "score")
    joint = model.log_joint(params, batch, proposal.z)
    if kl == "analytic":
      f = joint.log_lik
      penalty = beta * closed_form_kl(model, params, batch, proposal)
    else:
      f = joint.log_lik + beta * (joint.log_prior - proposal.log_q)
      penalty = 0.0
    coeff, new_state, extra = baselined(model, params, batch, f, state, baseline=baseline,
                                        decay=decay)
    value = _bounds.elbo(f) - penalty
    surrogate = jnp.mean(f + coeff * proposal.log_q_score, axis=0) - penalty + extra
    return with_surrogate(value, surrogate), new_state

  return body


def k_sample_body(*, num_groups: int, num_samples: int, estimator: str, baseline,
                  decay: float, sample_log_weights):
  """MIWAE(M, K) (IWAE for M = 1) with a "score" or "vimco" gradient.

  ``body(model, params, key, batch, beta, state) -> (values (batch,), new_state)``.
  """

  def body(model, params, key, batch, beta, state):
    lw = sample_log_weights(model, params, key, batch, num_groups * num_samples,
                            estimator=estimator, beta=beta)
    shape = (num_groups, num_samples, *lw.value.shape[1:])
    log_w = lw.value.reshape(shape)
    score = lw.log_q_score.reshape(shape)
    per_group = _bounds.iwae(log_w, axis=1)  # (M, batch)
    pathwise = jnp.sum(_stop(jax.nn.softmax(log_w, axis=1)) * log_w, axis=1)  # (M, batch)
    if estimator == "vimco":
      signals = jax.vmap(vimco_signals)(_stop(log_w))  # (M, K, batch)
      extra, new_state = 0.0, state
      score_term = jnp.sum(signals * score, axis=1)
    else:
      coeff, new_state, extra = baselined(model, params, batch, per_group, state,
                                          baseline=baseline, decay=decay)
      score_term = coeff * jnp.sum(score, axis=1)
    surrogate = jnp.mean(pathwise + score_term, axis=0) + extra
    return with_surrogate(jnp.mean(per_group, axis=0), surrogate), new_state

  return body
