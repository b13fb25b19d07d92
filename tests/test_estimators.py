"""Gradient estimators (reparam / STL / DReG), the Rényi-MIWAE-CIWAE-PIWAE family and stabilizers.

Checked against the exact linear-Gaussian oracle (:mod:`jvae.oracles`): unbiasedness of DReG and
STL, exactly-zero STL/DReG encoder gradients at the true posterior, the signal-to-noise ratio of
the encoder gradient as K grows (Rainforth et al. 2018; Tucker et al. 2018), relations between the
bounds, KL warm-up, free bits and the ``beta`` keyword.

Compilation dominates the run time on CPU, so each group of Monte-Carlo estimates is computed by
one ``jax.jit(jax.vmap(...))`` in a module-scoped fixture and the tests index into it.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jvae
from jvae import oracles

D, LATENT, BATCH = 5, 2, 3
NOISE = 0.8


def _keys(n, seed):
  """n fixed keys. The "rbg" generator (XLA RngBitGenerator) is used because under jit(vmap) it
  compiles 2-3x faster on CPU than threefry, which dominates this file's run time; the estimators
  are indifferent to which generator draws ε (any typed key is accepted)."""
  return jax.random.split(jax.random.key(seed, impl="rbg"), n)


def _setup(full_cov=False):
  model = oracles.linear_gaussian_vae(D, LATENT, noise_scale=NOISE, full_cov=full_cov)
  x = 2.0 * jax.random.normal(jax.random.key(1), (BATCH, D))
  params = model.init(jax.random.key(0), x)
  return model, params, x


def _diagonal_posterior_setup():
  """A factorized oracle whose exact posterior is itself factorized: W has orthogonal columns,
  so WᵀW (hence Cov[z|x]) is diagonal and a MultivariateNormalDiag q can equal p(z|x)."""
  model = oracles.linear_gaussian_vae(4, 2, noise_scale=NOISE)
  x = 2.0 * jax.random.normal(jax.random.key(1), (BATCH, 4))
  params = model.init(jax.random.key(0), x)
  dec = dict(params["params"]["decoder"])
  dec["W"] = jnp.array([[1.0, 2.0], [2.0, -1.0], [0.0, 1.0], [1.0, 0.0]])  # columns orthogonal
  params = {"params": {**params["params"], "decoder": dec}}
  return model, oracles.exact_posterior_params(model, params), x


def _encoder(grads):
  return grads["params"]["encoder"]


def _decoder(grads):
  return grads["params"]["decoder"]


def _grads_over_keys(objectives, params, keys, x, select=lambda g: g):
  """One jitted, key-vmapped pass: {name: select(grad of f(params, key, x).sum())}, key axis first.
  """

  def one_key(p, k):
    return {name: select(jax.grad(lambda p_, f=f: f(p_, k, x).sum())(p))
            for name, f in objectives.items()}

  return jax.jit(jax.vmap(one_key, in_axes=(None, 0)))(params, keys)


def _assert_same_mean(a, b, what, *, n_se=5.0, atol=1e-3):
  """Per component, the means over keys of two estimators agree: |mean(a − b)| < n_se·se + atol.

  Both were evaluated on the same keys, so the standard error is that of the paired difference
  (tighter than sqrt(se_a² + se_b²) when the two are correlated, hence a stronger test). 5 standard
  errors over a few dozen components keeps false alarms negligible; ``atol`` absorbs float32
  round-off where the two estimators agree key by key (se ≈ 0).
  """
  for path, ga in jax.tree_util.tree_leaves_with_path(a):
    gb = dict(jax.tree_util.tree_leaves_with_path(b))[path]
    diff = np.asarray(ga - gb, np.float64)
    se = diff.std(0) / math.sqrt(diff.shape[0])
    gap = np.abs(diff.mean(0))
    bad = gap >= n_se * se + atol
    assert not bad.any(), (
        f"{what}{jax.tree_util.keystr(path)}: means differ by {gap[bad]} with se {se[bad]} "
        f"(z = {gap[bad] / np.maximum(se[bad], 1e-12)})")


# -------------------------------------------------------------------------------------------------
# 1. Unbiasedness of DReG / STL against the standard reparameterization gradient.
# -------------------------------------------------------------------------------------------------

UNBIASED_KEYS = 4000  # se of each mean is ~1.5% of the per-key spread: biases of a few % show up


@pytest.fixture(scope="module")
def mismatched_grads():
  """Gradients over fixed keys for the init params: q is far from p(z|x) (A random, c = 0)."""
  model, params, x = _setup(full_cov=False)
  objectives = {
      "iwae5": jvae.iwae(model, num_samples=5),
      "iwae5_dreg": jvae.iwae(model, num_samples=5, estimator="dreg"),
      "iwae5_stl": jvae.iwae(model, num_samples=5, estimator="stl"),
      "iwae6": jvae.iwae(model, num_samples=6),
      "elbo": jvae.elbo(model, kl="sample"),
      "elbo_stl": jvae.elbo(model, kl="sample", estimator="stl"),
      "miwae": jvae.miwae(model, num_groups=2, num_samples=3),
      "miwae_dreg": jvae.miwae(model, num_groups=2, num_samples=3, estimator="dreg"),
      "piwae": jvae.piwae(model, num_groups=2, num_samples=3),
      "piwae_dreg": jvae.piwae(model, num_groups=2, num_samples=3, estimator="dreg"),
  }
  return _grads_over_keys(objectives, params, _keys(UNBIASED_KEYS, seed=11), x)


def test_iwae_dreg_gradient_is_unbiased(mismatched_grads):
  g = mismatched_grads
  _assert_same_mean(_encoder(g["iwae5_dreg"]), _encoder(g["iwae5"]), "IWAE_5 DReG encoder")
  _assert_same_mean(_decoder(g["iwae5_dreg"]), _decoder(g["iwae5"]), "IWAE_5 DReG decoder")
  # The decoder part of DReG is the standard Σ w̃ ∇θ log w: equal key by key, up to float32.
  for a, b in zip(jax.tree_util.tree_leaves(_decoder(g["iwae5_dreg"])),
                  jax.tree_util.tree_leaves(_decoder(g["iwae5"])), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_elbo_stl_gradient_is_unbiased(mismatched_grads):
  g = mismatched_grads
  _assert_same_mean(_encoder(g["elbo_stl"]), _encoder(g["elbo"]), "ELBO STL encoder")
  _assert_same_mean(_decoder(g["elbo_stl"]), _decoder(g["elbo"]), "ELBO STL decoder")


def test_elbo_stl_differs_from_reparam_key_by_key(mismatched_grads):
  """STL drops the score term, which is zero-mean but not zero: for q = N(μ, σ²) its part in the
  ∂/∂log σ gradient is Σ_batch (1 − ε²) per dimension, so the two must differ per key for every
  encoder parameter (μ-parameters A, c and log_scale alike)."""
  g = mismatched_grads
  for path, a in jax.tree_util.tree_leaves_with_path(_encoder(g["elbo_stl"])):
    b = dict(jax.tree_util.tree_leaves_with_path(_encoder(g["elbo"])))[path]
    per_key = np.abs(np.asarray(a - b)).reshape(a.shape[0], -1).max(axis=1)
    # |Σ_b (1 − ε_b²)| < 1e-2 on more than half the keys would be absurd (chi-square spread ~2.4).
    assert np.median(per_key) > 1e-2, (jax.tree_util.keystr(path), np.median(per_key))


def test_the_unbiasedness_check_detects_stl_bias_for_iwae(mismatched_grads):
  """Power check: STL is biased for IWAE_K, K > 1 (Tucker et al. 2018); the same comparison must
  reject it for the encoder mean parameters, otherwise the tests above prove nothing."""
  g = mismatched_grads
  with pytest.raises(AssertionError, match="differ"):
    _assert_same_mean(_encoder(g["iwae5_stl"])["c"], _encoder(g["iwae5"])["c"], "STL")


def test_miwae_dreg_gradient_is_unbiased(mismatched_grads):
  g = mismatched_grads
  _assert_same_mean(_encoder(g["miwae_dreg"]), _encoder(g["miwae"]), "MIWAE(2,3) DReG encoder")
  _assert_same_mean(_decoder(g["miwae_dreg"]), _decoder(g["miwae"]), "MIWAE(2,3) DReG decoder")


def test_piwae_decoder_follows_iwae_of_all_samples(mismatched_grads):
  """PIWAE(2,3)'s decoder gradient is IWAE_6's: same key, same 6 samples, so equal key by key."""
  g = mismatched_grads
  for name in ("piwae", "piwae_dreg"):
    _assert_same_mean(_decoder(g[name]), _decoder(g["iwae6"]), f"{name} decoder vs IWAE_6")
    for a, b in zip(jax.tree_util.tree_leaves(_decoder(g[name])),
                    jax.tree_util.tree_leaves(_decoder(g["iwae6"])), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_piwae_encoder_follows_miwae(mismatched_grads):
  """PIWAE(2,3)'s encoder gradient is MIWAE(2,3)'s: in expectation for DReG, and key by key for
  the same estimator (PIWAE and MIWAE group the same 6 samples the same way)."""
  g = mismatched_grads
  _assert_same_mean(_encoder(g["piwae_dreg"]), _encoder(g["miwae"]), "PIWAE DReG encoder")
  _assert_same_mean(_encoder(g["piwae"]), _encoder(g["miwae"]), "PIWAE encoder")
  for est in ("", "_dreg"):
    for a, b in zip(jax.tree_util.tree_leaves(_encoder(g["piwae" + est])),
                    jax.tree_util.tree_leaves(_encoder(g["miwae" + est])), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


# -------------------------------------------------------------------------------------------------
# 2. At the exact posterior, STL and DReG encoder gradients vanish for every key.
# -------------------------------------------------------------------------------------------------

EXACT_KEYS = 256
EXACT_CASES = ("full_cov", "factorized")
# Path-derivative estimators checked per case (the factorized case re-checks a subset, for time).
ZERO_AT_EXACT = {"full_cov": ("elbo_stl", "iwae_stl", "iwae_dreg", "miwae_dreg"),
                 "factorized": ("elbo_stl", "iwae_dreg")}


@pytest.fixture(scope="module")
def exact_grads():
  """Encoder gradients at q = p(z|x), {(case, estimator): grads with a key axis}, for the
  full-covariance oracle with a correlated posterior and the factorized oracle with a diagonal
  posterior (orthogonal columns of W). Both cases share one compiled function."""
  model, params, x = _setup(full_cov=True)
  cases = {
      "full_cov": (model, oracles.exact_posterior_params(model, params), x),
      "factorized": _diagonal_posterior_setup(),
  }

  def objectives(model):
    return {
        "elbo": jvae.elbo(model, kl="sample"),
        "elbo_stl": jvae.elbo(model, kl="sample", estimator="stl"),
        "iwae_stl": jvae.iwae(model, num_samples=4, estimator="stl"),
        "iwae_dreg": jvae.iwae(model, num_samples=4, estimator="dreg"),
        "miwae_dreg": jvae.miwae(model, num_groups=2, num_samples=2, estimator="dreg"),
    }

  def one_key(all_params, k):
    out = {}
    for case, (model, _, x) in cases.items():
      for name, f in objectives(model).items():
        if name != "elbo" and name not in ZERO_AT_EXACT[case]:
          continue
        grad = jax.grad(lambda p, f=f, x=x: f(p, k, x).sum())(all_params[case])
        out[case, name] = _encoder(grad)
    return out

  all_params = {case: params for case, (_, params, _) in cases.items()}
  return jax.jit(jax.vmap(one_key, in_axes=(None, 0)))(all_params, _keys(EXACT_KEYS, seed=5))


@pytest.mark.parametrize(("case", "name"),
                         [(c, n) for c, names in ZERO_AT_EXACT.items() for n in names])
def test_path_derivative_estimators_are_zero_at_exact_posterior(exact_grads, case, name):
  """log w(z) = log p(x) for every z, so ∂log w/∂z = 0 and the STL/DReG encoder gradient is
  exactly zero for each key (Roeder et al. 2017; Tucker et al. 2018); only float32 round-off of
  terms of size ~10 remains, hence the 1e-4 tolerance."""
  for path, g in jax.tree_util.tree_leaves_with_path(exact_grads[case, name]):
    worst = float(jnp.max(jnp.abs(g)))
    assert worst <= 1e-4, f"{case} {name} encoder{jax.tree_util.keystr(path)}: max |g| = {worst}"


@pytest.mark.parametrize("case", EXACT_CASES)
def test_reparam_gradient_is_nonzero_per_key_but_zero_mean_at_exact_posterior(exact_grads, case):
  """The standard estimator keeps the score term −∇φ log q(z|x): zero-mean, not zero per key."""
  for path, g in jax.tree_util.tree_leaves_with_path(exact_grads[case, "elbo"]):
    g = np.asarray(g, np.float64).reshape(EXACT_KEYS, -1)
    where = f"{case} ELBO encoder{jax.tree_util.keystr(path)}"
    # Per key the score term is O(1) (e.g. Σ_b (ε_b² − 1) for log σ), far above round-off.
    assert np.median(np.abs(g).max(axis=1)) > 0.1, where
    se = g.std(0) / math.sqrt(EXACT_KEYS)
    # 5 standard errors of the mean over 256 keys; 1e-4 for float32 round-off.
    np.testing.assert_array_less(np.abs(g.mean(0)), 5 * se + 1e-4, err_msg=where)


# -------------------------------------------------------------------------------------------------
# 3. Signal-to-noise ratio of the encoder gradient as K grows.
# -------------------------------------------------------------------------------------------------

SNR_KEYS = 2000  # the SNR estimate then has sd ≈ sqrt((1 + SNR²/2) / 2000) ≤ 0.08 for SNR ≤ 5
SNR_K = (1, 8, 64)


@pytest.fixture(scope="module")
def encoder_snr():
  """SNR = |mean g| / sd g of ∂IWAE_K/∂c (encoder offset), averaged over the d components.

  The oracle has a diagonal posterior; q is p(z|x) shifted by 0.3 (about one posterior sd) and
  1.2x too wide, so the weights have finite variance and K = 64 is near the large-K regime of the
  theory. ``c`` is used because its gradient has a clear mean at every K for both estimators
  (the log-scale gradient's mean is small compared with its spread for all K).
  """
  model, params, x = _diagonal_posterior_setup()
  enc = dict(params["params"]["encoder"])
  enc["c"] = enc["c"] + 0.3
  enc["log_scale"] = enc["log_scale"] + jnp.log(1.2)
  params = {"params": {**params["params"], "encoder": enc}}
  objectives = {(est, k): jvae.iwae(model, num_samples=k, estimator=est)
                for est in ("reparam", "dreg") for k in SNR_K}
  names = {f"{est}_{k}": f for (est, k), f in objectives.items()}
  grads = _grads_over_keys(names, params, _keys(SNR_KEYS, seed=3), x,
                           select=lambda g: _encoder(g)["c"])
  snr = {}
  for (est, k) in objectives:
    g = np.asarray(grads[f"{est}_{k}"], np.float64)
    snr[est, k] = float(np.mean(np.abs(g.mean(0)) / g.std(0)))
  print("encoder SNR of dIWAE_K/dc:", {f"{e} K={k}": round(v, 3) for (e, k), v in snr.items()})
  return snr


def test_standard_iwae_encoder_snr_falls_with_k(encoder_snr):
  """Rainforth et al. (2018): the standard encoder gradient's SNR is O(1/√K), i.e. ~8x lower at
  K = 64 than at K = 1. Asserting a factor 3 leaves room for the estimate's noise (sd ≤ 0.08)
  and for being short of the asymptote; measured 1.38 → 0.56 → 0.22 (K = 1, 8, 64)."""
  snr = encoder_snr
  assert snr["reparam", 8] < snr["reparam", 1], snr
  assert snr["reparam", 64] < snr["reparam", 8], snr
  assert snr["reparam", 64] < snr["reparam", 1] / 3, snr


def test_dreg_encoder_snr_does_not_fall_with_k(encoder_snr):
  """Tucker et al. (2018): DReG removes the term responsible for the decay; its SNR does not fall
  (measured 4.48 → 4.78 → 10.53 for K = 1, 8, 64). 0.8x allows for estimation noise (sd ≤ 0.08
  on values ~5) while still failing on an O(1/√K) decay like the standard estimator's."""
  snr = encoder_snr
  assert snr["dreg", 64] >= 0.8 * snr["dreg", 1], snr
  for k in SNR_K:
    assert snr["dreg", k] > snr["reparam", k], (k, snr)
  assert snr["dreg", 64] > 5 * snr["reparam", 64], snr


# -------------------------------------------------------------------------------------------------
# 4. The Rényi / MIWAE / CIWAE / PIWAE family.
# -------------------------------------------------------------------------------------------------

K = 6
FAMILY_KEYS = 400


def _family(model):
  """Objectives compared on the same key: K = 6 samples each (MIWAE/PIWAE as 2 groups of 3)."""
  return {
      "iwae": jvae.iwae(model, num_samples=K),
      "elbo": jvae.elbo(model, kl="sample", num_samples=K),
      "renyi_0": jvae.renyi(model, alpha=0.0, num_samples=K),
      "renyi_half": jvae.renyi(model, alpha=0.5, num_samples=K),
      "renyi_1": jvae.renyi(model, alpha=1.0, num_samples=K),
      "renyi_near_1": jvae.renyi(model, alpha=1.0 - 1e-6, num_samples=K),
      "renyi_2": jvae.renyi(model, alpha=2.0, num_samples=K),
      "miwae_1": jvae.miwae(model, num_groups=1, num_samples=K),
      "miwae_2_3": jvae.miwae(model, num_groups=2, num_samples=3),
      "ciwae_0": jvae.ciwae(model, num_samples=K, elbo_weight=0.0),
      "ciwae_half": jvae.ciwae(model, num_samples=K, elbo_weight=0.5),
      "ciwae_1": jvae.ciwae(model, num_samples=K, elbo_weight=1.0),
      "piwae_2_3": jvae.piwae(model, num_groups=2, num_samples=3),
  }


EXACT_FAMILY = ("renyi_half", "renyi_2", "miwae_2_3", "ciwae_half", "piwae_2_3")


@pytest.fixture(scope="module")
def family_values():
  """Values over fixed keys, in one compiled function: the whole family for the mismatched init
  q, and ``exact_<name>`` for the full-covariance oracle at q = p(z|x) next to ``exact_truth``."""
  model, params, x = _setup(full_cov=False)
  family = _family(model)
  fc_model, fc_params, fc_x = _setup(full_cov=True)
  fc_params = oracles.exact_posterior_params(fc_model, fc_params)
  fc_family = _family(fc_model)

  def one_key(p, fp, k):
    out = {name: f(p, k, x) for name, f in family.items()}
    out.update({f"exact_{name}": fc_family[name](fp, k, fc_x) for name in EXACT_FAMILY})
    out["exact_truth"] = oracles.exact_log_marginal(fc_model, fp, fc_x)
    return out

  out = jax.jit(jax.vmap(one_key, in_axes=(None, None, 0)))(
      params, fc_params, _keys(FAMILY_KEYS, seed=21))
  return {k: np.asarray(a, np.float64) for k, a in out.items()}


def test_renyi_endpoints(family_values):
  v = family_values
  # Same key, same K samples: L_0 is the IWAE and L_1 the K-sample ELBO up to round-off.
  np.testing.assert_allclose(v["renyi_0"], v["iwae"], rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(v["renyi_1"], v["elbo"], rtol=1e-6, atol=1e-5)
  # α → 1 is continuous: L_α − ELBO ≈ (1 − α)·Var[log w]/2, ~1e-5 here. A float32 evaluation
  # through logsumexp((1 − α) log w) / (1 − α) is off by ~0.1 nats at this α.
  np.testing.assert_allclose(v["renyi_near_1"], v["elbo"], rtol=0, atol=1e-3)


def test_renyi_ordering(family_values):
  """L_α is the log of the power mean of order 1 − α of the weights, so for the same samples
  L_2 ≤ ELBO = L_1 ≤ L_0.5 ≤ L_0 = IWAE key by key, and strictly in expectation for a mismatched
  q."""
  v = family_values
  slack = 1e-4  # float32 round-off of log-weights of size ~10-100
  assert np.all(v["renyi_2"] <= v["elbo"] + slack)
  assert np.all(v["elbo"] <= v["renyi_near_1"] + slack)
  assert np.all(v["renyi_near_1"] <= v["renyi_half"] + slack)
  assert np.all(v["elbo"] <= v["renyi_half"] + slack)
  assert np.all(v["renyi_half"] <= v["iwae"] + slack)
  for lo, hi in (("elbo", "renyi_half"), ("renyi_half", "iwae")):
    diff = v[hi] - v[lo]
    se = diff.std(0) / math.sqrt(FAMILY_KEYS)
    assert np.all(diff.mean(0) > 5 * se), (lo, hi, diff.mean(0), se)


def test_miwae_and_ciwae_special_cases(family_values):
  v = family_values
  np.testing.assert_allclose(v["miwae_1"], v["iwae"], rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(v["ciwae_0"], v["iwae"], rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(v["ciwae_1"], v["elbo"], rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(v["ciwae_half"], 0.5 * (v["iwae"] + v["elbo"]), rtol=1e-6, atol=1e-5)
  # PIWAE's value is the IWAE of all M·K samples.
  np.testing.assert_allclose(v["piwae_2_3"], v["iwae"], rtol=1e-6, atol=1e-5)
  # MIWAE(2, 3) sits between the 6-sample ELBO and IWAE_6 (same samples, Jensen within groups).
  assert np.all(v["elbo"] <= v["miwae_2_3"] + 1e-4)
  assert np.all(v["miwae_2_3"] <= v["iwae"] + 1e-4)


@pytest.mark.parametrize("name", EXACT_FAMILY)
def test_family_is_exact_at_the_true_posterior(family_values, name):
  """With q = p(z|x) every log-weight is log p(x), so every bound is exact for every key."""
  v = family_values
  # float32 round-off of log-weights of magnitude ~20 (as in test_objectives).
  np.testing.assert_allclose(v[f"exact_{name}"], v["exact_truth"], rtol=1e-5, atol=1e-4)


def test_bad_family_options():
  model, _, _ = _setup(full_cov=False)
  with pytest.raises(ValueError, match=r"alpha must be >= 0.*got -0\.5"):
    jvae.renyi(model, alpha=-0.5, num_samples=3)
  with pytest.raises(ValueError, match=r"unknown estimator 'dreg'.*'reparam', 'stl'"):
    jvae.renyi(model, alpha=0.5, num_samples=3, estimator="dreg")
  with pytest.raises(ValueError, match=r"unknown estimator 'dreg'.*'reparam', 'stl'"):
    jvae.ciwae(model, num_samples=3, elbo_weight=0.5, estimator="dreg")
  with pytest.raises(ValueError, match=r"unknown estimator 'stl'.*'reparam', 'dreg'"):
    jvae.piwae(model, num_groups=2, num_samples=3, estimator="stl")
  for make in (jvae.miwae, jvae.piwae):
    with pytest.raises(ValueError, match="num_groups must be an integer >= 1, got 0"):
      make(model, num_groups=0, num_samples=3)
  with pytest.raises(ValueError, match=r"elbo_weight must be in \[0, 1\], got 1.5"):
    jvae.ciwae(model, num_samples=3, elbo_weight=1.5)


# -------------------------------------------------------------------------------------------------
# 5. Stabilizers: warm-up schedules, free bits, and the beta keyword.
# -------------------------------------------------------------------------------------------------

def test_linear_warmup_values_and_transforms():
  sched = jvae.stabilizers.linear_warmup(10)
  expected = [0.0, 0.5, 1.0, 1.0]
  for step, want in zip((0, 5, 10, 20), expected, strict=True):
    assert float(sched(step)) == pytest.approx(want, abs=1e-7)
  steps = jnp.array([0, 5, 10, 20], jnp.int32)
  np.testing.assert_allclose(jax.jit(jax.vmap(sched))(steps), expected, atol=1e-7)
  np.testing.assert_allclose(jax.vmap(jax.jit(sched))(steps), expected, atol=1e-7)
  half = jvae.stabilizers.linear_warmup(4, beta_max=0.5)
  np.testing.assert_allclose(jax.vmap(half)(jnp.arange(6)), [0, 0.125, 0.25, 0.375, 0.5, 0.5],
                             atol=1e-7)
  assert float(jax.jit(jvae.stabilizers.linear_warmup(0, beta_max=0.7))(3)) == pytest.approx(0.7)
  with pytest.raises(ValueError, match="num_steps must be >= 0, got -1"):
    jvae.stabilizers.linear_warmup(-1)


def test_constant_beta():
  sched = jvae.stabilizers.constant_beta(0.25)
  assert float(sched(0)) == 0.25
  np.testing.assert_array_equal(jax.jit(jax.vmap(sched))(jnp.arange(3)), [0.25] * 3)


KL_PER_DIM = np.array([[0.1, 0.2, 1.5, 0.4],
                       [0.3, 0.0, 0.9, 1.2],
                       [0.2, 0.1, 2.1, 0.0]], np.float32)  # groups of 2: means 0.3 and 2.03


def test_free_bits_value_and_gradient():
  lam = 1.0
  kl = jnp.asarray(KL_PER_DIM)
  out = jvae.stabilizers.free_bits_kl(kl, lam=lam, num_latent_groups=2)
  assert out.shape == (3,)
  group_means = KL_PER_DIM.reshape(3, 2, 2).sum(-1).mean(0)
  assert group_means[0] < lam < group_means[1]  # one group held at λ, one active
  np.testing.assert_allclose(out.mean(), np.maximum(lam, group_means).sum(), rtol=1e-6)
  # Per point: λ for the held group plus the point's own KL in the active group.
  np.testing.assert_allclose(out, lam + KL_PER_DIM[:, 2:].sum(-1), rtol=1e-6)
  fb = jvae.stabilizers.free_bits_kl
  grad = jax.grad(lambda k: fb(k, lam=lam, num_latent_groups=2).mean())(kl)
  np.testing.assert_array_equal(grad[:, :2], 0.0)       # below λ: no gradient
  np.testing.assert_allclose(grad[:, 2:], 1.0 / 3.0, rtol=1e-6)  # above λ: 1/batch per element
  # One group per dimension: dimension means 0.2, 0.1, 1.5, 0.533 against λ = 0.5.
  per_dim = jvae.stabilizers.free_bits_kl(kl, lam=0.5, num_latent_groups=4)
  np.testing.assert_allclose(per_dim.mean(), 0.5 + 0.5 + 1.5 + 1.6 / 3, rtol=1e-6)
  with pytest.raises(ValueError, match="num_latent_groups must divide the latent size 4, got 3"):
    jvae.stabilizers.free_bits_kl(kl, lam=lam, num_latent_groups=3)
  with pytest.raises(ValueError, match="num_latent_groups must divide the latent size 4, got 0"):
    jvae.stabilizers.free_bits_kl(kl, lam=lam, num_groups=0)  # the former name, an alias
  with pytest.raises(ValueError, match="exactly once"):
    jvae.stabilizers.free_bits_kl(kl, lam=lam, num_groups=2, num_latent_groups=2)


FB_LAM = 1.35  # between the two group-mean KLs (≈1.41, ≈1.30) of the model below at init


@pytest.fixture(scope="module")
def factorized_values():
  """One jitted pass over a factorized VAE with d = 4 (the linear-Gaussian oracle: cheap to build,
  and free bits only sees q through its per-dimension KL): free-bits and beta-weighted objectives
  next to the same quantities computed by hand from the encoder, the decoder and the same key."""
  model = oracles.linear_gaussian_vae(6, 4, noise_scale=NOISE)
  x = 2.0 * jax.random.normal(jax.random.key(2), (4, 6))
  params = model.init(jax.random.key(0), x)
  key = jax.random.key(9)
  prior = model.prior_distribution(4)
  elbos = {
      "plain": jvae.elbo(model),
      "fb": jvae.elbo(model, free_bits=FB_LAM, free_bits_groups=2),
      "fb0": jvae.elbo(model, free_bits=0.0),
  }
  elbo_mc = jvae.elbo(model, kl="sample", num_samples=3)
  iwae = jvae.iwae(model, num_samples=3)

  def run(params, beta):
    out = {name: f(params, key, x) for name, f in elbos.items()}
    out.update({f"{name}_beta0": elbos[name](params, key, x, beta=0.0) for name in ("plain", "fb")})
    q = model.apply(params, x, method="encode")
    z1 = q.sample(seed=key, sample_shape=(1,))
    out["log_lik"] = model.apply(params, z1, method="decode").log_prob(x).mean(0)
    out["kl_per_dim"] = jvae.kl_per_dim(q, prior)
    out["kl"] = jvae.analytic_kl(q, prior)
    # beta as a traced scalar: log w = log p(x|z) + β(log p(z) − log q(z|x)).
    z, log_q = q.sample_and_log_prob(seed=key, sample_shape=(3,))
    lw = model.apply(params, z, method="decode").log_prob(x) + beta * (prior.log_prob(z) - log_q)
    out["mc_beta"], out["mc_hand"] = elbo_mc(params, key, x, beta=beta), lw.mean(0)
    out["iw_beta"] = iwae(params, key, x, beta=beta)
    out["iw_hand"] = jax.nn.logsumexp(lw, axis=0) - math.log(3)
    out["iw_1"], out["iw_default"] = iwae(params, key, x, beta=1.0), iwae(params, key, x)
    return out

  out = jax.jit(run)(params, jnp.float32(0.3))
  return {k: np.asarray(a, np.float64) for k, a in out.items()}


def test_free_bits_objective_matches_hand_computation(factorized_values):
  v = factorized_values
  group_kl = v["kl_per_dim"].reshape(4, 2, 2).sum(-1).mean(0)
  assert group_kl.min() < FB_LAM < group_kl.max(), group_kl  # the test's premise
  want = v["log_lik"].mean() - np.maximum(FB_LAM, group_kl).sum()
  # float32 sums of log-likelihoods of size ~10.
  np.testing.assert_allclose(v["fb"].mean(), want, rtol=1e-5, atol=1e-5)
  # λ = 0 holds no group back: exactly the plain analytic-KL ELBO, point by point.
  np.testing.assert_allclose(v["fb0"], v["plain"], rtol=1e-6, atol=1e-5)


def test_beta_keyword(factorized_values):
  v = factorized_values
  # beta = 0 leaves only the reconstruction term, whatever the KL treatment; for the analytic
  # ELBO that is the beta = 1 value plus the closed-form KL.
  for name in ("plain", "fb"):
    np.testing.assert_allclose(v[f"{name}_beta0"], v["log_lik"], rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(v["plain_beta0"], v["plain"] + v["kl"], rtol=1e-6, atol=1e-5)
  assert np.all(v["kl"] > 1e-3)  # else the check above would be vacuous
  # A traced beta weights log p(z) − log q(z|x) in each log-weight.
  np.testing.assert_allclose(v["mc_beta"], v["mc_hand"], rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(v["iw_beta"], v["iw_hand"], rtol=1e-6, atol=1e-5)
  assert np.all(np.abs(v["iw_beta"] - v["iw_1"]) > 1e-3)  # beta = 0.3 does change the value
  np.testing.assert_array_equal(v["iw_default"], v["iw_1"])


def test_free_bits_rejects_full_covariance_posterior():
  model, params, x = _setup(full_cov=True)
  f = jvae.elbo(model, free_bits=0.1)
  with pytest.raises(ValueError, match=r"closed-form per-group KL \(free bits\).*kl='sample'"):
    jax.eval_shape(f, params, jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"free_bits \(nats\) must be a finite number >= 0"):
    jvae.elbo(model, free_bits=-0.1)


# -------------------------------------------------------------------------------------------------
# 6. KL warm-up inside the trainer.
# -------------------------------------------------------------------------------------------------

def test_trainer_warmup_schedule():
  model, params, x = _setup(full_cov=False)
  tr = jvae.trainer(jvae.elbo(model), optax.sgd(0.0), batch_size=BATCH, warmup_steps=10)
  state = tr.init(params, jax.random.key(0))
  step = jax.jit(tr.step)
  betas = []
  for _ in range(12):
    state, metrics = step(state, x)
    betas.append(float(metrics["beta"]))
  np.testing.assert_allclose(betas, [0.1 * t for t in range(10)] + [1.0, 1.0], atol=1e-6)
  assert int(state.step) == 12


def test_trainer_passes_scheduled_beta_to_objective():
  """A probe objective returning β itself: the loss must be −β(step) with β_max = 0.5."""

  def probe(params, key, x, *, beta=1.0):
    del key
    return jnp.zeros(x.shape[0]) + params["w"] * 0.0 + beta

  tr = jvae.trainer(probe, optax.sgd(0.0), batch_size=2, warmup_steps=4, beta=0.5)
  state = tr.init({"w": jnp.zeros(())}, jax.random.key(0))
  step = jax.jit(tr.step)
  losses, betas = [], []
  for _ in range(6):
    state, metrics = step(state, jnp.zeros((2, 1)))
    losses.append(float(metrics["loss"]))
    betas.append(float(metrics["beta"]))
  np.testing.assert_allclose(betas, [0.0, 0.125, 0.25, 0.375, 0.5, 0.5], atol=1e-7)
  np.testing.assert_allclose(losses, [-b for b in betas], atol=1e-7)
