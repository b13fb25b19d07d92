r"""Annealed importance sampling of log p(x) and bidirectional Monte Carlo (layer 5).

AIS (Neal 2001, "Annealed importance sampling") moves C chains through the distributions

.. math::
   f_t(z) = f_0(z)^{1-\beta_t}\, p(x, z)^{\beta_t}, \qquad 0 = \beta_0 < \beta_1 < \dots
   < \beta_T = 1,

from a normalised f_0 to the unnormalised posterior f_T = p(x, z), whose normaliser is p(x). A
chain starts at z_0 ~ f_0 and, for t = 1 … T, adds log f_t(z_{t−1}) − log f_{t−1}(z_{t−1}) =
(β_t − β_{t−1})(log p(x, z_{t−1}) − log f_0(z_{t−1})) to its log-weight and then (for t < T)
moves z by an HMC transition that leaves f_t invariant. Then E[w] = p(x), and

.. math::
   \log \hat p(x) = \log \frac{1}{C} \sum_{c=1}^C w_c

is a stochastic lower bound on log p(x) (Jensen), consistent as C or T grows. This is the
evaluation protocol of Wu et al. (2017), "On the quantitative analysis of decoder-based generative
models", with two starting distributions:

* ``init="prior"``: f_0 = p(z), so f_t = p(z) p(x|z)^{β_t} (needs ``model.sample_prior``);
* ``init="posterior"``: f_0 = q(z|x), so f_t = q(z|x)^{1−β_t} p(x, z)^{β_t} (needs
  ``model.log_q``; draws from ``model.propose``). With a good encoder far fewer steps suffice.

Run backwards from an exact posterior sample (f_T → f_0), the same construction gives
E[w_rev] = 1/p(x), hence the stochastic *upper* bound −log (1/C) Σ_c w_rev,c. On data simulated
from the model, (z, x) ~ p(z) p(x|z), z is an exact sample of p(z|x), and the two runs sandwich
log p(x): bidirectional Monte Carlo (Grosse et al. 2015, "Sandwiching the marginal likelihood
using bidirectional Monte Carlo"; used by Wu et al. 2017 to validate AIS). :func:`bdmc` returns
both bounds per simulated point.

Transitions: blackjax's HMC kernel, ``num_leapfrog`` leapfrog steps, identity mass matrix, a
randomly jittered step (:func:`jvae.inference.hmc.hmc_step`). The
step size is shared by the C chains of a point and adapted on the fly toward ``target_accept``
(0.65, as Wu et al. 2017) by log ε ← log ε + ``adapt_rate`` · (mean acceptance − target).
Adapting from the chains' own acceptances makes the transitions depend on the past of the chains,
which strictly voids the AIS identity; the effect is small (the tests check the estimates against
exact values) and ``target_accept=None`` turns it off (fixed ε: exact AIS). :func:`bdmc`'s reverse
run reuses the forward run's step sizes, reversed, so it is exact AIS given the forward run.

Cost per chain: (T − 1)(L + 1) gradients of ``log_joint`` and T + 1 evaluations (T = num_steps,
L = num_leapfrog), against C·T·(L + 1) for a point's C chains.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jvae.bounds.numerics import check_number, log_mean_exp
from jvae.models.contract import check_model, num_examples
from jvae.objectives.log_weights import check_key, check_num_samples
from jvae.objectives.objectives import Objective, with_checks
from jvae.inference.hmc import (
    blackjax_hmc,
    check_chains,
    check_jitter,
    check_probability,
    hmc_step,
    over_chains,
    point_log_joint,
    point_log_q,
    point_slices,
    require_method,
)

Array = jax.Array

SCHEDULES = ("sigmoid", "geometric", "linear")
AIS_INITS = ("prior", "posterior")

_SIGMOID_SCALE = 4.0       # δ of Grosse et al.'s (2015) sigmoidal schedule
_GEOMETRIC_START = 1e-4    # β_1 of the geometric schedule


def ais_schedule(num_steps: int, schedule="sigmoid") -> np.ndarray:
  r"""The inverse temperatures β_0 = 0 < … < β_T = 1 of an annealing path, ``(T + 1,)``.

  * ``"sigmoid"``: β̃_t = σ(δ(2t/T − 1)), β_t = (β̃_t − β̃_0)/(β̃_T − β̃_0), δ = 4 (Grosse et al.
    2015, Sec. 6): short steps at both ends, where the intermediate distributions change fastest.
  * ``"geometric"``: β_t = β_1^{(T−t)/(T−1)} for t ≥ 1, β_1 = 10⁻⁴ (geometric spacing; Neal
    2001), β_0 = 0.
  * ``"linear"``: β_t = t/T.
  * an array of T + 1 finite values, non-decreasing from exactly 0 to exactly 1.

  Args:
    num_steps: T ≥ 1.
    schedule: a name above or an array.
  Returns:
    A float64 numpy array of T + 1 values.
  """
  check_num_samples(num_steps, "num_steps")
  t = np.arange(num_steps + 1, dtype=np.float64)
  if isinstance(schedule, str):
    if schedule == "linear":
      return t / num_steps
    if schedule == "sigmoid":
      s = 1.0 / (1.0 + np.exp(-_SIGMOID_SCALE * (2.0 * t / num_steps - 1.0)))
      return (s - s[0]) / (s[-1] - s[0])
    if schedule == "geometric":
      if num_steps == 1:
        return np.array([0.0, 1.0])
      out = _GEOMETRIC_START ** ((num_steps - t) / (num_steps - 1))
      out[0] = 0.0
      return out
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES} or an array "
                     "of num_steps + 1 inverse temperatures from 0 to 1")
  try:
    betas = np.asarray(schedule, dtype=np.float64)
  except (TypeError, ValueError, jax.errors.TracerArrayConversionError):
    raise TypeError("schedule must be a name or a concrete array of inverse temperatures, got "
                    f"{type(schedule).__name__}") from None
  if betas.shape != (num_steps + 1,):
    raise ValueError(f"a schedule array must have num_steps + 1 = {num_steps + 1} entries "
                     f"(β_0 … β_T), got shape {betas.shape}")
  if not (np.all(np.isfinite(betas)) and betas[0] == 0.0 and betas[-1] == 1.0
          and np.all(np.diff(betas) >= 0)):
    raise ValueError("a schedule array must be finite and non-decreasing from exactly 0 to "
                     f"exactly 1, got {betas}")
  return betas


class _Run(NamedTuple):
  log_w: Array            # (C, batch) AIS log-weights
  log_step_size: Array    # (T − 1, batch) log ε of each transition
  acceptance_rate: Array  # (T − 1, batch) mean over the point's chains


def _anneal(model, params, key, batch, z0, betas: Array, *, init: str, num_leapfrog: int,
            step_size: float, target_accept: float | None, adapt_rate: float, jitter: float,
            adapt=True, fixed_log_step=None) -> _Run:
  """One AIS run along ``betas`` (any direction) from z0 (leaves ``(C, batch, ...)``).

  ``adapt`` (a bool, possibly traced) chooses between the running, adapted step size and the
  given schedule ``fixed_log_step`` ``(T − 1, batch)`` (default: log ``step_size`` throughout).
  """
  points = point_slices(batch)
  n = num_examples(batch)
  c = check_chains(z0, n, "the initial samples")
  steps = betas.shape[0] - 1

  def parts(point, z):
    """(log f_0(z), log p(x, z)) of one chain."""
    log_lik, log_prior = point_log_joint(model, params, point, z)
    base = log_prior if init == "prior" else point_log_q(model, params, point, z)
    return base, log_prior + log_lik

  def log_f(point, z, beta):
    base, target = parts(point, z)
    return (1.0 - beta) * base + beta * target, target - base

  index = jnp.broadcast_to(jnp.arange(n), (c, n))
  chain_index = jnp.broadcast_to(jnp.arange(c)[:, None], (c, n))
  chain_keys = over_chains(
      lambda _, i, k: jax.random.fold_in(jax.random.fold_in(key, i), k), 2)(
          points, index, chain_index)

  def body(carry, inputs):
    z, log_w, log_eps, keys = carry
    t, fixed = inputs
    beta, previous = betas[t], betas[t - 1]

    def evaluate(point, z):
      return jax.value_and_grad(lambda z: log_f(point, z, beta), has_aux=True)(z)

    (lf, diff), grad = over_chains(evaluate, 1)(points, z)
    log_w = log_w + (beta - previous) * diff
    used = jnp.where(adapt, log_eps, fixed)
    eps = jnp.exp(used)

    def move(point, eps, key, z, lf, grad):
      state = blackjax_hmc().HMCState(z, lf, grad)
      key, new, info = hmc_step(key, state, lambda z: log_f(point, z, beta)[0], eps,
                                num_leapfrog, jitter)
      return key, new.position, info.acceptance_rate

    keys, z, accept = over_chains(move, 4, point_args=1)(points, eps, keys, z, lf, grad)
    accept = jnp.mean(accept, axis=0)
    if target_accept is not None:
      log_eps = log_eps + jnp.where(adapt, adapt_rate * (accept - target_accept), 0.0)
    return (z, log_w, log_eps, keys), (used, accept)

  log_eps0 = jnp.full((n,), math.log(step_size), betas.dtype)
  log_w0 = jnp.zeros((c, n), betas.dtype)
  ts = jnp.arange(1, steps)
  if fixed_log_step is None:
    fixed_log_step = jnp.full((steps - 1, n), math.log(step_size), betas.dtype)
  xs = (ts, fixed_log_step)
  (z, log_w, _, _), (used, accept) = jax.lax.scan(body, (z0, log_w0, log_eps0, chain_keys), xs)
  diff = over_chains(lambda point, z: log_f(point, z, betas[steps])[1], 1)(points, z)
  log_w = log_w + (betas[steps] - betas[steps - 1]) * diff
  return _Run(log_w, used, accept)


def _log_mean_exp_stderr(log_w: Array) -> tuple[Array, Array]:
  """log (1/C) Σ_c w_c over axis 0 and its delta-method standard error sd(w)/(√C · mean w)."""
  c = log_w.shape[0]
  value = log_mean_exp(log_w, axis=0)
  scaled = jnp.exp(log_w - jnp.max(log_w, axis=0))
  mean = jnp.mean(scaled, axis=0)
  var = jnp.maximum(jnp.mean(jnp.square(scaled), axis=0) - jnp.square(mean), 0.0)
  var = var * c / max(c - 1, 1)
  return value, jnp.sqrt(var / c) / mean


def _check_config(model, *, num_steps, num_chains, init, num_leapfrog, step_size,
                  target_accept, adapt_rate, jitter, schedule, purpose) -> np.ndarray:
  check_model(model)
  check_jitter(jitter)
  check_num_samples(num_chains, "num_chains")
  check_num_samples(num_leapfrog, "num_leapfrog")
  check_number(step_size, "AIS step_size", minimum=0.0, strict=True)
  if target_accept is not None:
    check_probability(target_accept, "target_accept")
  check_number(adapt_rate, "adapt_rate", minimum=0.0)
  if init not in AIS_INITS:
    raise ValueError(f"unknown init {init!r}; expected one of {AIS_INITS}")
  if init == "prior":
    require_method(model, "sample_prior", f"{purpose} with init='prior'")
  else:
    require_method(model, "log_q", f"{purpose} with init='posterior'")
  return ais_schedule(num_steps, schedule)


def ais_log_marginal(model, *, num_steps: int, num_chains: int, init: str = "prior",
                     num_leapfrog: int = 10, step_size: float = 0.1,
                     target_accept: float | None = 0.65, adapt_rate: float = 0.05,
                     jitter: float = 0.5, schedule="sigmoid",
                     return_stderr: bool = False) -> Objective:
  r"""AIS estimate of log p(x) with HMC transitions (Wu et al. 2017); see the module docstring.

  log p̂(x) = log (1/C) Σ_c w_c over C independent chains per data point, a stochastic lower
  bound that tightens as T (``num_steps``) or C grows; with ``return_stderr`` also the
  delta-method standard error sd(w)/(√C · mean w) over the chains, as :func:`jvae.log_marginal`
  (the error of each point's estimate over the chains' randomness; it does not see the bias of
  too few steps, which :func:`bdmc` measures).

  Args:
    model: any :class:`jvae.LatentModel` with ``sample_prior`` (``init="prior"``) or ``log_q``
      (``init="posterior"``).
    num_steps: T ≥ 1 annealing steps (T − 1 HMC transitions; T = 1 is importance sampling from
      f_0, i.e. :func:`jvae.log_marginal` with C samples for ``init="posterior"``).
    num_chains: C ≥ 1 chains per data point.
    init: ``"prior"`` (f_0 = p(z)) or ``"posterior"`` (f_0 = q(z|x)).
    num_leapfrog: L ≥ 1 leapfrog steps per transition.
    step_size: initial (or, with ``target_accept=None``, fixed) leapfrog step size ε > 0.
    target_accept: acceptance rate the per-point step size is adapted toward, in (0, 1), or None
      for a fixed step size.
    adapt_rate: the adaptation's gain on log ε per transition (≥ 0).
    jitter: each transition's step is ε·u, u ~ U(1 − jitter, 1 + jitter), in [0, 1) (see
      :func:`jvae.inference.hmc.hmc_step`).
    schedule: the spacing of the inverse temperatures along the (always geometric-average)
      path f_0^{1−β} p(x, z)^β: ``"sigmoid"`` (default; Grosse et al. 2015, short steps at both
      ends, where the intermediate distributions change fastest), ``"geometric"`` (β spaced
      geometrically from 10⁻⁴), ``"linear"`` or an array of T + 1 inverse temperatures
      (:func:`ais_schedule`).
    return_stderr: also return the standard errors.

  Returns:
    ``f(params, key, batch) -> Array[batch]`` (or ``(Array[batch], Array[batch])``), with the
    checks of every jvae bound (one PRNG key; a floating-point x ``(batch, *event)`` or a
    :class:`jvae.Batch`). An evaluation, not a training objective: ``beta`` must be 1.
    Jittable; the chains of point i use keys derived from ``fold_in(key, 1)`` and i.
  """
  betas_np = _check_config(model, num_steps=num_steps, num_chains=num_chains, init=init,
                           num_leapfrog=num_leapfrog, step_size=step_size,
                           target_accept=target_accept, adapt_rate=adapt_rate,
                           jitter=jitter, schedule=schedule, purpose="ais_log_marginal")

  def body(model, params, key, batch, beta):
    if not (isinstance(beta, (int, float)) and beta == 1.0):
      raise ValueError(f"ais_log_marginal estimates log p(x) itself and takes no KL weight; "
                       f"beta must be 1, got {beta!r}")
    init_key, run_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
    if init == "prior":
      z0 = model.sample_prior(params, init_key, batch, num_samples=num_chains)
    else:
      z0 = model.propose(params, init_key, batch, num_samples=num_chains).z
    if check_chains(z0, num_examples(batch), "the initial samples") != num_chains:
      raise ValueError(f"the model returned initial samples with a sample axis different from "
                       f"num_chains={num_chains}")
    dtype = jax.tree_util.tree_leaves(z0)[0].dtype
    run = _anneal(model, params, run_key, batch, z0, jnp.asarray(betas_np, dtype), init=init,
                  num_leapfrog=num_leapfrog, step_size=step_size,
                  target_accept=target_accept, adapt_rate=adapt_rate, jitter=jitter)
    value, stderr = _log_mean_exp_stderr(run.log_w)
    return (value, stderr) if return_stderr else value

  return with_checks(body, model)


def bdmc(model, *, num_steps: int, num_chains: int, init: str = "prior",
         num_leapfrog: int = 10, step_size: float = 0.1, target_accept: float | None = 0.65,
         adapt_rate: float = 0.05, jitter: float = 0.5,
         schedule="sigmoid") -> Callable[..., dict]:
  r"""Bidirectional Monte Carlo (Grosse et al. 2015): AIS lower and upper bounds on simulated data.

  Draws (z_i, x_i) ~ p(z) p(x|z), i = 1 … N (``model.sample_joint``), so that z_i is an exact
  sample of p(z|x_i). Forward AIS from f_0 to p(x_i, z) (C chains, as
  :func:`ais_log_marginal`) gives the stochastic lower bound
  ``lower`` = log (1/C) Σ_c w_c ≤ log p(x_i) (in expectation); reverse AIS along the same
  schedule and step sizes, every chain starting at z_i (all C from the same exact sample, which
  keeps E[(1/C) Σ_c w_rev,c] = 1/p(x_i)), gives ``upper`` = −log (1/C) Σ_c w_rev,c ≥ log p(x_i).
  The width ``upper − lower`` bounds the error of the forward estimate on such data; Grosse et
  al. and Wu et al. (2017) use it to choose T before trusting AIS on real data.

  Args:
    model: a :class:`jvae.LatentModel` with ``sample_joint`` and, as for
      :func:`ais_log_marginal`, ``sample_prior`` or ``log_q``.
    num_steps, num_chains, init, num_leapfrog, step_size, target_accept, adapt_rate, jitter,
      schedule:
      as :func:`ais_log_marginal`; the reverse run uses the forward run's step sizes, reversed.

  Returns:
    ``f(params, key, num_points) -> dict`` of ``(num_points,)`` arrays: ``"lower"``,
    ``"upper"``, their delta-method standard errors ``"lower_stderr"``, ``"upper_stderr"`` (the
    latter treats the reverse chains as independent, which they are after their shared start
    only approximately), and ``"x"`` ``(num_points, *event)``, the simulated data; plus
    ``"log_p_true"`` when the model has an ``exact_log_marginal(params, x)`` method (e.g.
    :class:`jvae.oracles.TwoLayerLinearGaussian`).
  """
  betas_np = _check_config(model, num_steps=num_steps, num_chains=num_chains, init=init,
                           num_leapfrog=num_leapfrog, step_size=step_size,
                           target_accept=target_accept, adapt_rate=adapt_rate,
                           jitter=jitter, schedule=schedule, purpose="bdmc")
  require_method(model, "sample_joint", "bdmc")
  exact = getattr(model, "exact_log_marginal", None)
  config = dict(init=init, num_leapfrog=num_leapfrog, step_size=step_size,
                target_accept=target_accept, adapt_rate=adapt_rate, jitter=jitter)

  def sandwich(params, key, num_points: int) -> dict:
    check_key(key)
    check_num_samples(num_points, "num_points")
    z, x = model.sample_joint(params, jax.random.fold_in(key, 0), num_points)
    check_chains(z, num_points, "sample_joint's z")
    dtype = jax.tree_util.tree_leaves(z)[0].dtype
    betas = jnp.asarray(betas_np, dtype)
    if init == "prior":
      z0 = model.sample_prior(params, jax.random.fold_in(key, 1), x, num_samples=num_chains)
    else:
      z0 = model.propose(params, jax.random.fold_in(key, 1), x, num_samples=num_chains).z
    start = jax.tree_util.tree_map(
        lambda a: jnp.broadcast_to(a[:1], (num_chains, *a.shape[1:])), z)

    def direction(steps, inputs):
      """Forward (adapting, recording ε_t), then reverse (the recorded ε_t, reversed): one
      traced AIS run for both, which halves the program XLA compiles."""
      key, z0, betas, forward = inputs
      run = _anneal(model, params, key, x, z0, betas, adapt=forward,
                    fixed_log_step=steps[::-1], **config)
      return run.log_step_size, run.log_w

    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(2, 4))
    starts = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), z0, start)
    steps0 = jnp.full((num_steps - 1, num_points), math.log(step_size), dtype)
    _, log_w = jax.lax.scan(direction, steps0, (keys, starts, jnp.stack([betas, betas[::-1]]),
                                                jnp.array([True, False])))
    lower, lower_se = _log_mean_exp_stderr(log_w[0])
    neg_upper, upper_se = _log_mean_exp_stderr(log_w[1])
    out = {"x": x, "lower": lower, "upper": -neg_upper, "lower_stderr": lower_se,
           "upper_stderr": upper_se}
    if callable(exact):
      out["log_p_true"] = exact(params, x)
    return out

  return sandwich
