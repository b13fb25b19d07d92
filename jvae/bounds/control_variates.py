r"""Control variates for score-function gradients, on arrays of log-weights (layer 1).

No keys, no Flax: these turn log-weights and learning signals into the per-sample coefficients
that multiply ∇ log q(z_k|x) in a score-function (REINFORCE) surrogate. The objectives in
:mod:`jvae.objectives.score` build the surrogates from them.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from jvae.bounds.numerics import log_mean_exp

Array = jax.Array

__all__ = ["vimco_leave_one_out", "vimco_signals", "MovingAverage", "moving_average_init",
           "moving_average_update", "normalize_signal"]


def vimco_leave_one_out(log_w: Array) -> Array:
  r"""L̂_{-k}: the K-sample bound with sample k replaced by the geometric mean of the others.

  VIMCO (Mnih & Rezende 2016, Eq. 9): with S = Σ_j log w_j and
  log ŵ_{-k} = (S − log w_k)/(K − 1),

  .. math:: \hat L_{-k} = \log\frac1K\Big(\sum_{j\ne k} w_j + \hat w_{-k}\Big).

  Computed as one log-sum-exp over a ``(K, K, ...)`` array whose diagonal holds log ŵ_{-k}, so it
  is exact for any spread of the log-weights (memory K² per data point).

  Args:
    log_w: ``(K, ...)`` log-weights, K ≥ 2 on axis 0.
  Returns:
    ``(K, ...)``: L̂_{-k} for each k.
  Raises:
    ValueError: K < 2 (there is no "other" sample to stand in for the one left out).
  """
  chex.assert_type(log_w, float)
  if log_w.ndim < 1 or log_w.shape[0] < 2:
    raise ValueError("VIMCO needs K >= 2 samples per data point (the baseline of sample k is "
                     f"built from the others), got log_w of shape {tuple(log_w.shape)}")
  k = log_w.shape[0]
  others_mean = (jnp.sum(log_w, axis=0, keepdims=True) - log_w) / (k - 1)  # (K, ...)
  eye = jnp.eye(k, dtype=bool).reshape((k, k) + (1,) * (log_w.ndim - 1))
  table = jnp.where(eye, others_mean[:, None], log_w[None, :])  # [k, j]
  return log_mean_exp(table, axis=1)


def vimco_signals(log_w: Array) -> Array:
  r"""The per-sample VIMCO learning signals L̂ − L̂_{-k}, ``(K, ...)``, with L̂ = IWAE_K.

  Each multiplies ∇ log q(z_k|x); the baseline L̂_{-k} does not depend on z_k, so the estimator
  stays unbiased (Mnih & Rezende 2016, Eq. 10).
  """
  return log_mean_exp(log_w, axis=0)[None] - vimco_leave_one_out(log_w)


class MovingAverage(NamedTuple):
  """Exponential moving averages of a learning signal's mean and variance (NVIL's c and v).

  Attributes:
    mean: ``()`` running mean c.
    var: ``()`` running variance v.
    count: ``()`` int32 number of updates (0: nothing seen yet).
  """

  mean: Array
  var: Array
  count: Array


def moving_average_init() -> MovingAverage:
  """c = 0, v = 1, count = 0: no centring and no rescaling until the first update."""
  return MovingAverage(jnp.zeros((), jnp.float32), jnp.ones((), jnp.float32),
                       jnp.zeros((), jnp.int32))


def moving_average_update(state: MovingAverage, signal: Array, *, decay: float) -> MovingAverage:
  r"""c ← αc + (1−α)·mean(signal), v ← αv + (1−α)·var(signal) (Mnih & Gregor 2014, Alg. 1).

  The first update sets c and v to the batch's mean and variance (no bias towards the initial
  0 and 1). ``signal`` is stopped: the state never carries a gradient.
  """
  signal = jax.lax.stop_gradient(signal)
  mean, var = jnp.mean(signal), jnp.var(signal)
  first = state.count == 0
  new_mean = jnp.where(first, mean, decay * state.mean + (1 - decay) * mean)
  new_var = jnp.where(first, var, decay * state.var + (1 - decay) * var)
  return MovingAverage(new_mean.astype(jnp.float32), new_var.astype(jnp.float32),
                       state.count + 1)


def normalize_signal(signal: Array, state: MovingAverage) -> Array:
  r"""(signal − c) / max(1, √v): NVIL's centring and variance normalisation (Mnih & Gregor 2014).

  Dividing by a positive number that does not depend on the current samples keeps the gradient's
  direction in expectation; it rescales the encoder's step so that its size does not track the
  magnitude of log p(x), a few hundred nats early in training.
  """
  return (signal - state.mean) / jnp.maximum(1.0, jnp.sqrt(state.var))
