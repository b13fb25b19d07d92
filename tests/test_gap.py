"""The amortization-gap report (Cremer et al. 2018) on the linear-Gaussian oracle.

There every column has a closed form: log p(x); L[q] of the (factorized, linear) encoder
(``oracles.exact_elbo``); L[q*] of the best factorized Gaussian, log p(x) − ½(Σᵢ log Λᵢᵢ −
log|Λ|) with Λ the posterior precision; and L[q*] = log p(x) for the full-covariance family,
which contains p(z|x).
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jvae import oracles
from jvae.inference.gap import amortization_gap, format_table, with_log_marginal

D, LATENT, N = 6, 3, 6


def _near_posterior(model, params):
  """A factorized encoder near p(z|x): the exact posterior mean shifted by 0.3, the best
  factorized variances widened 1.3×; its log-weights vary by about a nat, so the Monte-Carlo
  ELBO is sharp."""
  dec = params["params"]["decoder"]
  w, b = dec["W"], dec["b"]
  s2 = model.decoder.noise_scale ** 2
  prec = jnp.eye(LATENT) + w.T @ w / s2
  gain = jnp.linalg.solve(prec, w.T) / s2
  enc = {"A": gain, "c": 0.3 - gain @ b, "log_scale": -0.5 * jnp.log(jnp.diag(prec)) + 0.26}
  return {"params": {**params["params"], "encoder": enc}}


@functools.lru_cache
def _setup():
  model = oracles.linear_gaussian_vae(D, LATENT, noise_scale=0.8)
  x = jnp.asarray(2.0 * np.random.default_rng(1).standard_normal((N, D)), jnp.float32)
  params = jax.jit(functools.partial(_near_posterior, model))(
      jax.jit(model.init)(jax.random.key(0), x))

  @jax.jit
  def reference(params, x):
    _, cov = oracles.exact_posterior(model, params, x)
    prec = jnp.linalg.inv(cov)
    log_px = oracles.exact_log_marginal(model, params, x)
    gap = 0.5 * (jnp.sum(jnp.log(jnp.diag(prec))) - jnp.linalg.slogdet(prec)[1])
    return {"log_marginal": log_px, "elbo_amortized": oracles.exact_elbo(model, params, x),
            "elbo_local_gaussian": log_px - gap, "elbo_local_full_cov": log_px}

  return model, params, x, jax.device_get(reference(params, x))


def _exact_log_marginal(params, key, batch):
  del key
  return oracles.exact_log_marginal(_setup()[0], params, batch)


def test_gaps_match_the_closed_forms():
  """Per point and on average, every column and gap equals its closed form.

  Settings: 1500 local Adam steps (K=16, STL), ELBOs from 8,000 samples in two chunks, two
  batches (4 + 2 padded). Measured: |L[q*] − closed form| ≤ 1.0e-2 nats for the factorized
  family (≤ 1.1 of its Monte-Carlo standard errors, ≈ 9e-3) and ≤ 8e-6 for the full covariance
  (whose log-weights are all log p(x)); |L[q] − closed form| ≤ 0.064 (≤ 1.3 standard errors of
  ≈ 0.05). Closed-form gaps: approximation 0.41, amortization 3.06 nats. Tolerances: 4 standard
  errors + 5e-3 nats (the local optimum's own error) for the factorized family and the encoder,
  1e-3 nats for the full covariance.
  """
  model, params, x, ref = _setup()
  steps = 1500
  result = amortization_gap(
      model, params, jax.random.key(3), x, log_marginal=_exact_log_marginal,
      local_steps=steps, local_samples=16,
      optimizer=optax.adam(optax.cosine_decay_schedule(5e-2, steps, alpha=0.01)),
      eval_samples=8000, eval_chunk=4000, batch_size=4)
  per = {k: np.asarray(v) for k, v in result["per_point"].items()}
  se = {k: np.asarray(v) for k, v in result["mc_stderr"].items()}
  assert result["num_points"] == N and result["encoder"] == "gaussian"
  assert result["log_marginal_method"] == "_exact_log_marginal"
  assert result["log_marginal_mc_stderr"] is None
  np.testing.assert_allclose(per["log_marginal"], ref["log_marginal"], rtol=1e-6)
  np.testing.assert_allclose(per["elbo_local_full_cov"], ref["elbo_local_full_cov"], atol=1e-3)
  np.testing.assert_array_less(se["elbo_local_full_cov"], 1e-3)
  for name in ("elbo_local_gaussian", "elbo_amortized"):
    assert np.all(se[name] > 0) and np.all(se[name] < 0.1)
    np.testing.assert_array_less(np.abs(per[name] - ref[name]), 4 * se[name] + 5e-3)
  approx = ref["log_marginal"] - ref["elbo_local_gaussian"]
  amort = ref["elbo_local_gaussian"] - ref["elbo_amortized"]
  assert np.all(approx > 0.1) and np.all(amort > 0.1)  # both gaps are there to be measured
  tol = 4 * np.hypot(se["elbo_local_gaussian"], se["elbo_amortized"]) + 5e-3
  np.testing.assert_array_less(np.abs(per["approximation_gap_gaussian"] - approx),
                               4 * se["elbo_local_gaussian"] + 5e-3)
  np.testing.assert_array_less(np.abs(per["amortization_gap_gaussian"] - amort), tol)
  np.testing.assert_allclose(per["approximation_gap_full_cov"], 0.0, atol=1e-3)
  np.testing.assert_array_less(np.abs(per["inference_gap"] - approx - amort),
                               4 * se["elbo_amortized"] + 5e-3)
  # The means and paired standard errors over points.
  gap = per["amortization_gap_gaussian"]
  assert result["mean"]["amortization_gap_gaussian"] == pytest.approx(gap.mean())
  assert result["stderr"]["amortization_gap_gaussian"] == pytest.approx(
      gap.std(ddof=1) / np.sqrt(N))
  assert result["mean"]["approximation_gap_gaussian"] == pytest.approx(approx.mean(), abs=1e-2)
  # The local optimisation's mean curve rises to its end.
  curve = result["trace"]["gaussian"]["bound"]
  assert result["trace"]["gaussian"]["step"][-1] == steps - 1 and curve[-1] > curve[0]
  # Another log p̂ (here log p + 1) moves the approximation and inference gaps, nothing else.
  other = with_log_marginal(result, per["log_marginal"] + 1.0, method="shifted",
                            mc_stderr=np.full(N, 0.5))
  assert other["log_marginal_method"] == "shifted" and result["log_marginal_method"] != "shifted"
  for name in ("approximation_gap_gaussian", "approximation_gap_full_cov", "inference_gap"):
    assert other["mean"][name] == pytest.approx(result["mean"][name] + 1.0)
  assert other["per_point"]["amortization_gap_gaussian"] == result["per_point"][
      "amortization_gap_gaussian"]
  assert other["log_marginal_mc_stderr"] == pytest.approx(0.5 / np.sqrt(N))
  with pytest.raises(ValueError, match=r"one value per point, shape \(6,\)"):
    with_log_marginal(result, per["log_marginal"][:3], method="short")
  # JSON as it is, and a table in Cremer et al.'s layout.
  json.loads(json.dumps(result))
  table = format_table(result)
  assert "| amortization gap  L[q*] − L[q] |" in table and "factorized q* *" in table
  line = next(r for r in table.splitlines() if r.startswith("| approximation gap"))
  assert f"{result['mean']['approximation_gap_gaussian']:.2f} ± " in line


def test_bad_input():
  model, params, x, _ = _setup()
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="unknown log_marginal 'exact'"):
    amortization_gap(model, params, key, x, log_marginal="exact")
  with pytest.raises(ValueError, match="unknown posterior 'flow'"):
    amortization_gap(model, params, key, x, posteriors=("flow",))
  with pytest.raises(ValueError, match="local_steps must be an integer >= 1"):
    amortization_gap(model, params, key, x, local_steps=0)
  with pytest.raises(ValueError, match="unknown init"):
    amortization_gap(model, params, key, x, init="encoder")
  with pytest.raises(ValueError, match=r"shape \(N, \*event\)"):
    amortization_gap(model, params, key, x[:0])
