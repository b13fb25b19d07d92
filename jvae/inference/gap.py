r"""The inference gaps of a trained model: approximation and amortization (layer 5).

Cremer, Li & Duvenaud (2018), "Inference Suboptimality in Variational Autoencoders", Sec. 3: the
inference gap log p(x) − L[q] of an encoder q(z|x) splits into

.. math::
   \underbrace{\log p(x) - \mathcal L[q]}_{\text{inference gap}}
   = \underbrace{\log p(x) - \mathcal L[q^*]}_{\text{approximation gap}}
   + \underbrace{\mathcal L[q^*] - \mathcal L[q]}_{\text{amortization gap}},

where q* = argmax over the variational family of L[q] for *this* x, found by local optimisation
(:func:`jvae.inference.optimize_local`). log p(x) is estimated by IWAE with many samples
(``jvae.log_marginal``) or by annealed importance sampling; L[q*] for a factorized Gaussian
(the family of the usual encoder) and a full-covariance one (a flexible family, standing in for
Cremer et al.'s flow). :func:`amortization_gap` returns per-point values and their means ± the
standard error over points as plain floats and lists (JSON as it is); :func:`format_table`
prints them in the layout of Cremer et al.'s tables.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np
import optax

from jvae.inference.local import (
    POSTERIORS,
    _check_estimator,
    _check_init,
    check_posterior,
    check_steps,
    chunked_mean,
    local_elbo,
    optimize_local,
)
from jvae.models.contract import Batch, check_model, data_of
from jvae.objectives.log_marginal import log_marginal as _iwae_log_marginal
from jvae.objectives.log_weights import check_key, check_num_samples

Array = jax.Array

LOG_MARGINALS = ("iwae", "ais")
_LABELS = {"gaussian": "factorized", "full_cov": "full covariance"}


def _amortized_elbo(model, params, key, batch, num_samples: int, chunk_size: int) -> Array:
  """L[q] of the model's own encoder, E_q[log p(x, z) − log q(z|x)], by K chunked samples."""

  def log_weights(k, size):
    proposal = model.propose(params, k, batch, num_samples=size)
    joint = model.log_joint(params, batch, proposal.z)
    return joint.log_lik + joint.log_prior - proposal.log_q

  return chunked_mean(log_weights, key, num_samples, chunk_size, return_stderr=True)


def _encoder_family(model, params, batch) -> str | None:
  method = getattr(model, "amortized_gaussian", None)
  if not callable(method):
    return None
  try:
    out = jax.eval_shape(lambda p, b: method(p, b), params, batch)
  except TypeError:
    return None
  return "gaussian" if out[2] is None else "full_cov"


def _log_marginal_fn(model, log_marginal, *, num_samples, chunk_size, ais_steps, ais_chains,
                     ais_init, ais_options):
  """``f(params, key, batch) -> value or (value, stderr)`` and a description of it."""
  if callable(log_marginal):
    return log_marginal, getattr(log_marginal, "__name__", "callable")
  if log_marginal not in LOG_MARGINALS:
    raise ValueError(f"unknown log_marginal {log_marginal!r}; expected one of {LOG_MARGINALS} "
                     "or a callable f(params, key, batch) -> Array[batch]")
  if log_marginal == "iwae":
    return (_iwae_log_marginal(model, num_samples=num_samples, chunk_size=chunk_size,
                               return_stderr=True), f"iwae (K={num_samples})")
  try:
    from jvae.inference.ais import ais_log_marginal  # optional; imported when asked for
  except ImportError as err:
    raise ValueError("log_marginal='ais' needs jvae.inference.ais.ais_log_marginal, which is "
                     f"not importable here ({err}); use log_marginal='iwae' or a callable") from err
  options = {"num_steps": ais_steps, "num_chains": ais_chains, "init": ais_init,
             "return_stderr": True, **(ais_options or {})}
  return (ais_log_marginal(model, **options),
          f"ais ({options['num_steps']} steps, {options['num_chains']} chains, "
          f"init={options['init']})")


def _summary(values: np.ndarray) -> tuple[float, float]:
  """Mean and its standard error over points, std(ddof=1)/√N (0 for one point)."""
  n = values.shape[0]
  se = float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else 0.0
  return float(np.mean(values)), se


def _batches(data, batch_size: int):
  """``(start, size, batch)`` over the data, the last batch padded with its first row to
  ``batch_size`` (one compiled shape); ``size`` is the number of real rows."""
  n = data_of(data).shape[0]
  for start in range(0, n, batch_size):
    size = min(batch_size, n - start)

    def take(a, start=start, size=size):
      a = a[start:start + size]
      if size < batch_size:
        a = np.concatenate([a, np.repeat(a[:1], batch_size - size, axis=0)])
      return a

    yield start, size, jax.tree_util.tree_map(take, data)


def amortization_gap(model, params, key, data, *, log_marginal: str | Callable = "iwae",
                     num_samples: int = 5000, chunk_size: int = 250, ais_steps: int = 1000,
                     ais_chains: int = 16, ais_init: str = "posterior",
                     ais_options: dict | None = None,
                     posteriors: Sequence[str] = POSTERIORS, local_steps: int = 1000,
                     optimizer: optax.GradientTransformation | None = None,
                     learning_rate: float = 1e-2, local_samples: int = 1,
                     estimator: str = "stl", init: str = "amortized",
                     eval_samples: int = 1000, eval_chunk: int = 250,
                     batch_size: int = 100, trace_points: int = 50,
                     log_marginal_name: str | None = None) -> dict:
  r"""The approximation and amortization gaps of a trained model on some points (Cremer et al.).

  For each point xᵢ: log p̂(xᵢ); L[q] of the model's encoder; and for each family in
  ``posteriors`` L[q*] of a locally optimised q* (``local_steps`` steps from ``init`` by
  :func:`jvae.inference.optimize_local`), then

  * ``approximation_gap_<family>`` = log p̂(x) − L[q*_family],
  * ``amortization_gap_<family>`` = L[q*_family] − L[q],
  * ``inference_gap`` = log p̂(x) − L[q] (their sum, for either family).

  Cremer et al.'s amortization gap compares q* of the encoder's own family (``encoder`` in the
  result; ``"gaussian"`` for ``jvae.burda2015``); the full-covariance q* is the flexible family
  of their approximation gap. Every L is an ELBO estimate with ``eval_samples`` fresh samples
  (``eval_chunk`` at a time); the gaps' standard errors are those of the per-point differences
  (paired), hence smaller than the columns'. log p̂ is an estimate too (IWAE and AIS are
  stochastic lower bounds in expectation), so a gap can come out slightly negative on a point.

  Not a jitted function: it loops over batches of ``batch_size`` points on the host and calls
  jitted pieces (compiled once per shape; the last batch is padded).

  Args:
    model: a :class:`jvae.LatentModel` whose z is one array ``(K, batch, d)``.
    params: trained parameters (one seed, not stacked).
    key: PRNG key.
    data: x ``(N, *event)`` or a :class:`jvae.Batch` of arrays with leading axis N ≥ 1;
      cast to float32.
    log_marginal: ``"iwae"`` (``jvae.log_marginal`` with ``num_samples``/``chunk_size``),
      ``"ais"`` (``jvae.inference.ais.ais_log_marginal`` with ``num_steps=ais_steps``,
      ``num_chains=ais_chains``, ``init=ais_init`` and ``ais_options``) or a callable
      ``f(params, key, batch) -> Array[batch]`` (or ``(value, stderr)``), e.g. an exact one.
    num_samples, chunk_size: IWAE's K (5000 in the standard protocol) and chunk.
    ais_steps, ais_chains, ais_init, ais_options: AIS settings: T, C, the start f_0
      (``"posterior"``: the encoder's q(z|x), which needs far fewer steps than ``"prior"``) and
      further keywords of ``ais_log_marginal`` (e.g. ``num_leapfrog``).
    posteriors: families of q*, from ``("gaussian", "full_cov")``.
    local_steps: optimizer steps per point for q*.
    optimizer: optax transformation for λ; default Adam with a cosine decay from
      ``learning_rate`` to 1% of it over ``local_steps``.
    learning_rate: the default optimizer's initial step size.
    local_samples: samples per local step.
    estimator: local gradient, ``"stl"`` or ``"reparam"``.
    init: where q* starts: ``"amortized"`` (the encoder's q; needs
      ``model.amortized_gaussian``) or ``"prior"``.
    eval_samples, eval_chunk: samples for every ELBO estimate, drawn this many at a time.
    batch_size: points per jitted call.
    trace_points: how many (evenly spaced) steps of the mean optimisation curve to keep.
    log_marginal_name: how the result names the log p̂ estimator (default: from
      ``log_marginal``, a callable's ``__name__``).
  Returns:
    A JSON-ready dict: ``num_points``; ``log_marginal_method``; ``encoder`` (the encoder's
    family, or None); ``posteriors``; ``mean`` and ``stderr`` (floats per quantity, the
    standard error over points); ``per_point`` (lists of N floats per quantity:
    ``log_marginal``, ``elbo_amortized``, ``elbo_local_<family>``, the gaps);
    ``mc_stderr`` (per point, the Monte-Carlo standard error of each ELBO estimate, sd(log w)/√K,
    and of log p̂ when its estimator reports one);
    ``log_marginal_mc_stderr`` (the Monte-Carlo error of mean log p̂ when the estimator
    reports one, else None); ``trace`` (per family: ``step`` and mean ``bound`` of the local
    optimisation); ``config`` and ``seconds``.
  """
  check_model(model)
  check_key(key)
  posteriors = tuple(posteriors)
  if not posteriors:
    raise ValueError("posteriors is empty; expected some of ('gaussian', 'full_cov')")
  for p in posteriors:
    check_posterior(p)
  check_steps(local_steps, "local_steps")
  check_num_samples(local_samples, "local_samples")
  check_num_samples(eval_samples, "eval_samples")
  check_num_samples(eval_chunk, "eval_chunk")
  check_steps(batch_size, "batch_size")
  check_steps(trace_points, "trace_points")
  _check_estimator(estimator)
  _check_init(init)
  if not isinstance(init, str):
    raise ValueError("init must be 'amortized' or 'prior' here (one start for every point)")
  if init == "amortized" and not callable(getattr(model, "amortized_gaussian", None)):
    raise TypeError(f"init='amortized' needs model.amortized_gaussian(params, batch), which "
                    f"{type(model).__name__} does not have; use init='prior'")

  # On the host: slicing and padding there compile nothing.
  if isinstance(data, Batch):
    data = jax.tree_util.tree_map(np.asarray, data._replace(x=np.asarray(data.x, np.float32)))
  else:
    data = np.asarray(data, np.float32)
  x = data_of(data)
  if x.ndim < 2 or x.shape[0] == 0:
    raise ValueError(f"data must have shape (N, *event) with N >= 1, got {tuple(x.shape)}")
  n = int(x.shape[0])
  batch_size = min(batch_size, n)
  default_optimizer = optimizer is None
  if default_optimizer:
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, local_steps, alpha=0.01))

  lm_fn, lm_name = _log_marginal_fn(model, log_marginal, num_samples=num_samples,
                                    chunk_size=chunk_size, ais_steps=ais_steps,
                                    ais_chains=ais_chains, ais_init=ais_init,
                                    ais_options=ais_options)
  # Each column is one compiled program of (params, key, start, batch); its key is
  # fold_in(fold_in(key, start), column), derived inside so that the loop runs no eager op.
  def column(fn, i):
    return jax.jit(lambda p, k, start, b: fn(p, jax.random.fold_in(jax.random.fold_in(k, start),
                                                                   i), b))

  lm_fn = column(lm_fn, 0)
  amortized_fn = column(lambda p, k, b: _amortized_elbo(model, p, k, b, eval_samples,
                                                        eval_chunk), 1)

  def local_fn(posterior, i):
    def run(p, k, b):
      k_opt, k_eval = jax.random.split(k)
      lam, trace = optimize_local(model, p, k_opt, b, steps=local_steps, optimizer=optimizer,
                                  init=init, posterior=posterior, num_samples=local_samples,
                                  estimator=estimator)
      value = local_elbo(model, p, k_eval, b, lam, num_samples=eval_samples,
                         chunk_size=eval_chunk, return_stderr=True)
      return value, trace
    return column(run, i)

  local_fns = {p: local_fn(p, 2 + i) for i, p in enumerate(posteriors)}
  cols = {"log_marginal": [], "elbo_amortized": [], **{f"elbo_local_{p}": [] for p in posteriors}}
  mc_se, traces = [], {p: [] for p in posteriors}
  elbo_se = {name: [] for name in cols if name != "log_marginal"}
  seconds = {"log_marginal": 0.0, "elbo_amortized": 0.0, **{f"local_{p}": 0.0 for p in posteriors}}
  for start, size, batch in _batches(data, batch_size):
    start = np.int32(start)
    t = time.perf_counter()
    out = jax.block_until_ready(lm_fn(params, key, start, batch))
    seconds["log_marginal"] += time.perf_counter() - t
    if isinstance(out, tuple):
      value, se = out
      mc_se.append(np.asarray(se, np.float64)[:size])
    else:
      value = out
    cols["log_marginal"].append(np.asarray(value, np.float64)[:size])
    t = time.perf_counter()
    value, se = jax.block_until_ready(amortized_fn(params, key, start, batch))
    seconds["elbo_amortized"] += time.perf_counter() - t
    cols["elbo_amortized"].append(np.asarray(value, np.float64)[:size])
    elbo_se["elbo_amortized"].append(np.asarray(se, np.float64)[:size])
    for p in posteriors:
      t = time.perf_counter()
      (value, se), trace = jax.block_until_ready(local_fns[p](params, key, start, batch))
      seconds[f"local_{p}"] += time.perf_counter() - t
      cols[f"elbo_local_{p}"].append(np.asarray(value, np.float64)[:size])
      elbo_se[f"elbo_local_{p}"].append(np.asarray(se, np.float64)[:size])
      traces[p].append(np.asarray(trace, np.float64)[:, :size])

  per_point = {name: np.concatenate(v) for name, v in cols.items()}
  keep = np.unique(np.linspace(0, local_steps - 1, min(trace_points, local_steps)).astype(int))
  trace_out = {}
  for p in posteriors:
    curve = np.concatenate(traces[p], axis=1).mean(axis=1)
    trace_out[p] = {"step": keep.tolist(), "bound": curve[keep].tolist()}
  first = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((1, *a.shape[1:]), a.dtype),
                                 data)
  mc_stderr = {name: np.concatenate(v).tolist() for name, v in elbo_se.items()}
  result = {
      "num_points": n,
      "encoder": _encoder_family(model, params, first),
      "posteriors": list(posteriors),
      "per_point": {name: v.tolist() for name, v in per_point.items()},
      "mc_stderr": mc_stderr,
      "trace": trace_out,
      "config": {"local_steps": local_steps, "local_samples": local_samples,
                 "learning_rate": learning_rate if default_optimizer else None,
                 "estimator": estimator, "init": init, "eval_samples": eval_samples,
                 "num_samples": num_samples if log_marginal == "iwae" else None,
                 "batch_size": batch_size},
      "seconds": seconds,
  }
  return with_log_marginal(result, per_point["log_marginal"],
                           method=log_marginal_name or lm_name,
                           mc_stderr=np.concatenate(mc_se) if mc_se else None)


def with_log_marginal(result: dict, log_marginal, *, method: str, mc_stderr=None) -> dict:
  """``result`` of :func:`amortization_gap` with another log p̂(x) per point, gaps recomputed.

  For comparing estimators of log p(x) (IWAE, AIS) on the same local optima and L[q] without
  optimising again: every ELBO column stays, ``log_marginal`` and the gaps are replaced.

  Args:
    result: an :func:`amortization_gap` result (or one of this function's).
    log_marginal: ``(N,)`` log p̂(x) of the same points, in the same order.
    method: its description (``log_marginal_method``).
    mc_stderr: optional ``(N,)`` Monte-Carlo standard errors of those estimates.
  Returns:
    A new JSON-ready dict (``result`` is not changed).
  """
  lp = np.asarray(log_marginal, np.float64).reshape(-1)
  n = result["num_points"]
  if lp.shape != (n,):
    raise ValueError(f"log_marginal must have one value per point, shape ({n},), got "
                     f"{np.shape(log_marginal)}")
  posteriors = result["posteriors"]
  per_point = {name: np.asarray(v, np.float64) for name, v in result["per_point"].items()
               if name.startswith("elbo_")}
  per_point = {"log_marginal": lp, **per_point}
  amortized = per_point["elbo_amortized"]
  per_point["inference_gap"] = lp - amortized
  for p in posteriors:
    local = per_point[f"elbo_local_{p}"]
    per_point[f"approximation_gap_{p}"] = lp - local
    per_point[f"amortization_gap_{p}"] = local - amortized
  stats = {name: _summary(v) for name, v in per_point.items()}
  mc = {name: v for name, v in result["mc_stderr"].items() if name != "log_marginal"}
  se_mean = None
  if mc_stderr is not None:
    se = np.asarray(mc_stderr, np.float64).reshape(-1)
    mc["log_marginal"] = se.tolist()
    se_mean = float(np.sqrt(np.sum(np.square(se))) / n)
  return {**result, "log_marginal_method": method,
          "mean": {name: s[0] for name, s in stats.items()},
          "stderr": {name: s[1] for name, s in stats.items()},
          "per_point": {name: v.tolist() for name, v in per_point.items()},
          "mc_stderr": mc, "log_marginal_mc_stderr": se_mean}


def format_table(result: dict, *, digits: int = 2) -> str:
  """The gaps of :func:`amortization_gap` as a Markdown table in Cremer et al.'s layout.

  One column per family of q* (factorized, full covariance), rows log p̂(x), L[q*], L[q] and the
  approximation, amortization and inference gaps, each ``mean ± s.e.`` over the points (nats;
  the gaps' errors are paired). The column of the encoder's own family is marked with ``*``:
  its amortization gap is Cremer et al.'s.
  """
  mean, se = result["mean"], result["stderr"]
  posteriors = result["posteriors"]
  cell = lambda name: f"{mean[name]:.{digits}f} ± {se[name]:.{digits}f}"
  header = [f"{_LABELS.get(p, p)} q*" + (" *" if p == result.get("encoder") else "")
            for p in posteriors]
  rows = [
      ("log p̂(x)", lambda p: cell("log_marginal")),
      ("L[q*] (local)", lambda p: cell(f"elbo_local_{p}")),
      ("L[q] (amortized)", lambda p: cell("elbo_amortized")),
      ("approximation gap  log p̂(x) − L[q*]", lambda p: cell(f"approximation_gap_{p}")),
      ("amortization gap  L[q*] − L[q]", lambda p: cell(f"amortization_gap_{p}")),
      ("inference gap  log p̂(x) − L[q]", lambda p: cell("inference_gap")),
  ]
  lines = [f"Inference gaps (Cremer et al. 2018) on {result['num_points']} points; log p̂(x) by "
           f"{result['log_marginal_method']}; nats, mean ± s.e. over points",
           "| | " + " | ".join(header) + " |",
           "|---|" + "---|" * len(posteriors)]
  for label, fn in rows:
    lines.append(f"| {label} | " + " | ".join(fn(p) for p in posteriors) + " |")
  if result.get("encoder") in posteriors:
    lines.append("* the encoder's own family: its amortization gap is Cremer et al.'s")
  return "\n".join(lines)
