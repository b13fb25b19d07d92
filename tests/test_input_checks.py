"""Bad input never yields a number: build-time and trace-time checks of hyper-parameters, and NaN
(never a finite value or +inf) for data outside a likelihood's support.

Hyper-parameters that make a density or a bound undefined are refused when the object is built or
the function traced, with a ``ValueError`` saying what was expected and what was given. Only
static values are checked: a traced value can't be inspected, so it must pass through unchecked
(and not crash the check).
"""

from __future__ import annotations

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jvae import bounds
from jvae.bounds import numerics, stabilizers
from jvae.distributions import (
    BernoulliLikelihood,
    FullCovGaussianPosterior,
    GaussianLikelihood,
    GaussianPosterior,
    IAFPosterior,
    StableBernoulli,
    bernoulli,
)

NAN, INF = float("nan"), float("inf")
BAD_POSITIVE = (0.0, -0.5, NAN, INF, -INF, np.float32(NAN), np.float64(0.0), "1.0", None, True)
BAD_NONNEGATIVE = (-0.1, -1, NAN, INF, np.float32(-1.0), "0.5", None, False)


def _expected(what: str, bound: str) -> str:
  return rf"{what}: expected a finite number {bound}, got "


# ------------------------------------------------------------------------------------------------
# Hyper-parameters.


def test_bad_scales():
  """GaussianLikelihood's fixed σ: 0, negative, NaN, ±inf or a non-number is refused when the
  module is built (learned σ or not); a valid NumPy σ builds; a traced σ is not checked."""
  for bad in BAD_POSITIVE:
    for learn_scale in (False, True):
      with pytest.raises(ValueError, match=_expected("GaussianLikelihood scale", "> 0")):
        GaussianLikelihood((3,), scale=bad, learn_scale=learn_scale)
  head = GaussianLikelihood((3,), scale=np.float32(0.5))
  h, x = jnp.ones((2, 4)), jnp.zeros((2, 3))
  params = head.init(jax.random.key(0), h)

  def log_prob(scale):
    return GaussianLikelihood((3,), scale=scale).apply(params, h).log_prob(x)

  np.testing.assert_array_equal(jax.jit(log_prob)(0.5), log_prob(0.5))


@pytest.mark.parametrize("make", [
    lambda m: GaussianLikelihood((3,), learn_scale=True, min_scale=m),
    lambda m: GaussianPosterior(2, min_scale=m),
    lambda m: FullCovGaussianPosterior(2, min_scale=m),
    lambda m: IAFPosterior(2, num_steps=1, hidden=(4,), min_scale=m),
], ids=["GaussianLikelihood", "GaussianPosterior", "FullCovGaussianPosterior", "IAFPosterior"])
def test_bad_min_scale(make):
  """Every head with a σ floor refuses a floor that is 0, negative, NaN or infinite at build."""
  name = type(make(1e-3)).__name__
  for bad in BAD_POSITIVE:
    with pytest.raises(ValueError, match=_expected(f"{name} min_scale", "> 0")):
      make(bad)


def test_bad_min_scale_array_level():
  """The layer-1 floor itself: refused when static, a traced floor works as given."""
  raw = jnp.array([-1e4, 0.0])
  for bad in BAD_POSITIVE:
    with pytest.raises(ValueError, match=_expected("min_scale", "> 0")):
      numerics.softplus_scale(raw, bad)
  traced = jax.jit(numerics.softplus_scale)(raw, 0.25)
  np.testing.assert_array_equal(traced, numerics.softplus_scale(raw, 0.25))


def test_bad_iaf_hyper_parameters():
  with pytest.raises(ValueError, match="forget_bias: expected a finite number, got nan"):
    IAFPosterior(2, forget_bias=NAN)
  with pytest.raises(ValueError, match=_expected("IAFPosterior out_init_scale", ">= 0")):
    IAFPosterior(2, out_init_scale=INF)


def test_bad_warmup_and_beta():
  """β < 0 rewards the KL, and β = NaN poisons every step: both refused when built."""
  for bad in BAD_NONNEGATIVE:
    with pytest.raises(ValueError, match=_expected("linear_warmup beta_max", ">= 0")):
      stabilizers.linear_warmup(10, beta_max=bad)
    with pytest.raises(ValueError, match=_expected("linear_warmup beta_max", ">= 0")):
      stabilizers.linear_warmup(0, beta_max=bad)
    with pytest.raises(ValueError, match=_expected("constant_beta beta", ">= 0")):
      stabilizers.constant_beta(bad)
  assert float(stabilizers.linear_warmup(0, beta_max=0)(5)) == 0.0
  assert float(jax.jit(lambda b: stabilizers.constant_beta(b)(3))(0.25)) == 0.25


def test_free_bits_nan():
  """λ = NaN or < 0 is refused at trace time; a traced λ is used as given."""
  kl = jnp.asarray(np.random.default_rng(0).uniform(0.0, 2.0, (3, 4)), jnp.float32)
  for bad in BAD_NONNEGATIVE:
    with pytest.raises(ValueError, match=_expected("free_bits_kl lam", ">= 0")):
      stabilizers.free_bits_kl(kl, lam=bad, num_latent_groups=2)
    with pytest.raises(ValueError, match=_expected("free_bits_kl lam", ">= 0")):
      jax.jit(lambda k, lam=bad: stabilizers.free_bits_kl(k, lam=lam, num_latent_groups=2))(kl)
  fb = stabilizers.free_bits_kl
  traced = jax.jit(lambda k, lam: fb(k, lam=lam, num_latent_groups=2))(kl, 1.0)
  np.testing.assert_array_equal(traced, stabilizers.free_bits_kl(kl, lam=1.0, num_latent_groups=2))


def test_renyi_alpha_nan():
  """α NaN, ±inf or < 0 (and CIWAE's β outside [0, 1] or NaN) are refused, eager or under jit."""
  lw = jnp.asarray(np.random.default_rng(1).normal(-10.0, 1.0, (4, 3)), jnp.float32)
  for bad in BAD_NONNEGATIVE:
    with pytest.raises(ValueError, match=_expected("renyi alpha", ">= 0")):
      bounds.renyi(lw, bad)
    with pytest.raises(ValueError, match=_expected("renyi alpha", ">= 0")):
      bounds.renyi(lw, alpha=bad)
    with pytest.raises(ValueError, match=_expected("renyi alpha", ">= 0")):
      jax.jit(lambda w, al=bad: bounds.renyi(w, al))(lw)
  with pytest.raises(TypeError, match="static alpha"):
    jax.jit(bounds.renyi)(lw, 0.5)
  for bad in (NAN, -0.1, 1.5, INF, None):
    with pytest.raises(ValueError, match=_expected("ciwae beta", r"in \[0, 1\]")):
      bounds.ciwae(lw, bad)
  # A traced β can't be checked and is used as given.
  np.testing.assert_allclose(jax.jit(bounds.ciwae)(lw, 0.25), bounds.ciwae(lw, 0.25), rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Data outside the support.

OUTSIDE = np.array([-0.1, 1.1, -1e-30, 1.0 + 1e-6, NAN, INF, -INF, 1e30], np.float32)
INSIDE = np.array([0.0, 1.0, 0.3, 1e-30, 0.999], np.float32)


def _old_bernoulli(logits, x):
  return x * logits - jax.nn.softplus(logits)


@pytest.mark.xla_defaults  # bitwise across two compiled programs
@pytest.mark.parametrize("jit", [False, True])
def test_bernoulli_outside_support_is_nan(jit):
  """x ∉ [0, 1] (NaN and ±inf included) gives NaN, where the bare formula gives a finite value or
  +inf; x in [0, 1] is bitwise the formula, and its gradient is unchanged and finite also for
  logits of ±1e4, with no NaN leaking from the invalid entries into a masked loss."""
  f = jax.jit if jit else (lambda g: g)
  logits = jnp.asarray([[-1e4], [-3.0], [0.0], [2.5], [1e4]], jnp.float32)  # (5, 1)
  x_bad = jnp.broadcast_to(jnp.asarray(OUTSIDE), (5, OUTSIDE.size))
  x_ok = jnp.broadcast_to(jnp.asarray(INSIDE), (5, INSIDE.size))
  bad = np.asarray(f(numerics.bernoulli_log_prob)(logits, x_bad))
  assert np.all(np.isnan(bad)), bad
  ok = np.asarray(f(numerics.bernoulli_log_prob)(logits, x_ok))
  assert ok.tobytes() == np.asarray(f(_old_bernoulli)(logits, x_ok)).tobytes()

  # Mixed valid and invalid entries, through the distrax wrappers.
  x = jnp.concatenate([x_ok, x_bad], axis=1)
  wide = jnp.broadcast_to(logits, x.shape)
  per_entry = np.asarray(f(lambda lg, v: StableBernoulli(logits=lg).log_prob(v))(wide, x))
  np.testing.assert_array_equal(np.isnan(per_entry), np.isnan(np.asarray(x)) | (x < 0) | (x > 1))
  per_event = np.asarray(f(lambda lg, v: bernoulli(lg).log_prob(v))(wide, x))
  assert np.all(np.isnan(per_event))  # every row has an invalid pixel
  assert np.all(np.isnan(np.asarray(f(bounds.iwae)(jnp.asarray(per_event[:, None]).T))))

  # Gradients: valid entries as for the bare formula (x − σ(l)), invalid entries zero when masked.
  valid = jnp.asarray((x >= 0) & (x <= 1))

  def masked(lg):
    lp = numerics.bernoulli_log_prob(lg, x)
    return jnp.sum(jnp.where(valid, lp, 0.0))

  grad = np.asarray(f(jax.grad(masked))(wide))
  ref = np.asarray(jax.grad(lambda lg: jnp.sum(_old_bernoulli(lg, x_ok)))(wide[:, :INSIDE.size]))
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(grad[:, :INSIDE.size], ref)
  np.testing.assert_array_equal(grad[:, INSIDE.size:], 0.0)
  # Through the Bernoulli head: the logits' shared Dense weights get finite gradients too.
  head = BernoulliLikelihood((x.shape[1],))
  h = jnp.ones((5, 2))
  params = head.init(jax.random.key(0), h)
  grads = f(jax.grad(lambda p: jnp.sum(jnp.where(valid, head.apply(p, h).distribution.log_prob(x),
                                                 0.0))))(params)
  for leaf in jax.tree.leaves(grads):
    assert np.all(np.isfinite(leaf))


@pytest.mark.parametrize("jit", [False, True])
def test_non_finite_pixels_give_nan(jit):
  """A NaN pixel makes log p(x|z) NaN for both likelihoods, and ±inf makes the Gaussian's −inf
  and the Bernoulli's NaN: never a finite number or +inf, in the bound too."""
  f = jax.jit if jit else (lambda g: g)
  h = jnp.asarray(np.random.default_rng(2).standard_normal((3, 2, 4)), jnp.float32)  # (K, B, F)
  x = np.full((2, 3), 0.5, np.float32)
  for head in (GaussianLikelihood((3,)), GaussianLikelihood((3,), learn_scale=True),
               BernoulliLikelihood((3,))):
    params = head.init(jax.random.key(0), h)
    gaussian = isinstance(head, GaussianLikelihood)

    def bound(p, x, head=head):
      log_lik = head.apply(p, h).log_prob(x)  # (K, B)
      return log_lik, bounds.iwae(log_lik), bounds.renyi(log_lik, 0.5), bounds.elbo(log_lik)

    for pixel, want in ((NAN, "nan"), (INF, "-inf" if gaussian else "nan"),
                        (-INF, "-inf" if gaussian else "nan")):
      x_bad = x.copy()
      x_bad[1, 2] = pixel
      log_lik, *values = (np.asarray(v) for v in f(bound)(params, jnp.asarray(x_bad)))
      assert np.all(np.isfinite(log_lik[:, 0])), (head, pixel)  # the clean data point
      for v in (log_lik[:, 1], *(b[1] for b in values)):
        if want == "nan":
          assert np.all(np.isnan(v)), (head, pixel, v)
        else:
          assert np.all(v == -np.inf), (head, pixel, v)


def test_gaussian_likelihood_density_matches_formula_at_valid_x():
  """Control for the tests above: the Gaussian head is distrax's Normal for finite x."""
  head = GaussianLikelihood((3,), scale=0.7)
  h = jnp.ones((2, 4))
  params = head.init(jax.random.key(0), h)
  p = head.apply(params, h)
  x = jnp.asarray([[0.1, -2.0, 3.0], [1e3, 0.0, -1e3]])
  ref = distrax.Normal(p.distribution.loc, 0.7).log_prob(x).sum(-1)
  np.testing.assert_allclose(p.log_prob(x), ref, rtol=1e-6)


# -- the fused Bernoulli sum -----------------------------------------------------------------------

def _elementwise_sum(logits, x, event_ndims):
  per = numerics.bernoulli_log_prob(*jnp.broadcast_arrays(logits, x))
  return per.sum(tuple(range(-event_ndims, 0)))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("shape, x_shape, event_ndims", [
    ((3, 4, 784), (4, 784), 1),   # K samples against a batch; 784 = 14 blocks of 56
    ((2, 797), (2, 797), 1),      # a prime size: padded to 13 blocks of 64
    ((5, 7), (5, 7), 1),          # one block
    ((2, 3, 28, 28), (3, 28, 28), 2),
])
def test_bernoulli_sum_equals_the_elementwise_sum_with_its_gradients(jit, shape, x_shape,
                                                                     event_ndims):
  """Value, reverse- and forward-mode derivatives (logits and x) against autodiff of the summed
  elementwise form, on random logits with entries of ±1e4 and grey x in [0, 1]; the value to
  float32 round-off of a sum of |terms| up to ~1e3 (atol 2e-3), the gradients to 1e-5."""
  f = jax.jit if jit else (lambda g: g)
  kl, kx, kb, kt = jax.random.split(jax.random.key(7), 4)
  logits = jax.random.normal(kl, shape) * 4
  logits = jnp.where(jax.random.uniform(kb, shape) < 0.02, jnp.sign(logits) * 1e4, logits)
  x = jnp.clip(jax.random.uniform(kx, x_shape) * 1.4 - 0.2, 0, 1)  # zeros, ones and grey
  fused = f(lambda lg, x: numerics.bernoulli_log_prob_sum(lg, x, event_ndims=event_ndims))
  plain = f(lambda lg, x: _elementwise_sum(lg, x, event_ndims))
  value, ref = fused(logits, x), plain(logits, x)
  assert value.shape == shape[:len(shape) - event_ndims] and value.dtype == jnp.float32
  assert np.all(np.isfinite(value))
  np.testing.assert_allclose(value, ref, rtol=1e-6, atol=2e-3)
  g = jax.random.normal(kt, value.shape)
  (dl, dx), (dl_ref, dx_ref) = (
      jax.grad(lambda lg, x, h=h: jnp.sum(g * h(lg, x)), (0, 1))(logits, x)
      for h in (fused, plain))
  np.testing.assert_allclose(dl, dl_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
  tl = jax.random.normal(kb, shape)
  _, jvp = jax.jvp(lambda lg: fused(lg, x), (logits,), (tl,))
  _, jvp_ref = jax.jvp(lambda lg: plain(lg, x), (logits,), (tl,))
  np.testing.assert_allclose(jvp, jvp_ref, rtol=1e-5, atol=1e-3)


def test_bernoulli_sum_is_nan_outside_the_support_with_finite_masked_gradients():
  logits = jnp.asarray([[-1e4, -3.0, 0.0, 2.5, 1e4]] * 3, jnp.float32)
  x = jnp.asarray([[0.0, 1.0, 0.3, 1.0, 1.0], [0.0, 1.0, np.nan, 1.0, 1.0],
                   [0.0, 1.0, 1.5, 1.0, 1.0]], jnp.float32)
  value = numerics.bernoulli_log_prob_sum(logits, x)
  assert np.isfinite(value[0]) and np.all(np.isnan(value[1:]))
  grad = jax.grad(lambda lg: jnp.sum(jnp.where(jnp.arange(3) == 0,
                                              numerics.bernoulli_log_prob_sum(lg, x), 0)))(logits)
  assert np.all(np.isfinite(grad)) and not np.any(grad[1:])
  with pytest.raises(ValueError, match="event_ndims must be an int >= 1, got 0"):
    numerics.bernoulli_log_prob_sum(logits, x, event_ndims=0)
  with pytest.raises(ValueError, match="fewer than event_ndims=3"):
    numerics.bernoulli_log_prob_sum(logits, x, event_ndims=3)


def test_bernoulli_likelihood_sums_with_the_fused_form():
  """``jvae.distributions.likelihoods.bernoulli`` scores like distrax's Independent of the
  elementwise StableBernoulli, and samples the same."""
  from jvae.distributions.likelihoods import StableBernoulli, bernoulli
  logits = jax.random.normal(jax.random.key(1), (6, 28, 28)) * 3
  x = (jax.random.uniform(jax.random.key(2), (6, 28, 28)) < 0.3).astype(jnp.float32)
  fused, plain = bernoulli(logits, 2), distrax.Independent(StableBernoulli(logits=logits), 2)
  np.testing.assert_allclose(fused.log_prob(x), plain.log_prob(x), rtol=1e-6, atol=1e-3)
  assert fused.event_shape == (28, 28) and fused.batch_shape == (6,)
  key = jax.random.key(3)
  np.testing.assert_array_equal(fused.sample(seed=key), plain.sample(seed=key))
