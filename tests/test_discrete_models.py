"""Models with discrete latents (jvae.models.discrete): the contract, log-densities against the
distributions module, the closed-form KLs against Monte Carlo, extreme logits, temperatures, and
the relaxed bound against the exact discrete ELBO.

Tiny sizes (x of 8 pixels, 4 latents, batch 3) and fixed keys: every Monte-Carlo check is
deterministic, its tolerance stated as a multiple of the standard error. Compiling is most of the
cost on a 2-core machine, so each model has one jitted program holding everything its tests read
(compiled once, rerun at other parameters), shapes are checked by ``eval_shape`` (no compile),
parameters come from ``eval_shape(init)`` filled with fixed-seed numbers, and programs are
compiled without LLVM's backend optimisations or XLA's fusion emitters (half the compile time,
same results to ~1e-6 for these tiny programs).
"""

from __future__ import annotations

import functools
import itertools
import math

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jvae.distributions import discrete as dd
from jvae.models.contract import Batch, check_model
from jvae.models.discrete import DiscreteVAE, MixedVAE, SigmoidBeliefNet

P, D, B, C = 8, 4, 3, 3
K_MC = 4000
X = jnp.asarray((np.random.default_rng(0).random((B, P)) < 0.5), jnp.float32)

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                   "xla_cpu_use_fusion_emitters": False})


def key(seed: int):
  """A typed key of the ``rbg`` PRNG: much cheaper to compile than threefry; any key works."""
  return jax.random.key(seed, impl="rbg")


def _dvae(**kw):
  kw = {"num_latents": D, "hidden": (6,), **kw}
  return DiscreteVAE(event_shape=(P,), **kw)


MODELS = {
    "bernoulli": _dvae(learn_prior=True),
    "categorical": _dvae(latent="categorical", num_categories=C),
    "concrete": _dvae(relaxation="concrete", temperature=0.5, discrete_kl=True),
    "concrete_categorical": _dvae(latent="categorical", num_categories=C,
                                  relaxation="concrete", temperature=0.5,
                                  prior_temperature=0.7, learn_prior=True, discrete_kl=True),
    "straight_through": _dvae(latent="categorical", num_categories=C,
                              relaxation="straight_through", activation="relu",
                              discrete_kl=True),
    "sbn1": SigmoidBeliefNet(event_shape=(P,), layers=(D,), hidden=5),
    "sbn3": SigmoidBeliefNet(event_shape=(P,), layers=(D, 3, 2)),
    "mixed": MixedVAE(event_shape=(P,), num_categories=C, latent_dim=2, hidden=(6,)),
}
DISCRETE = {"bernoulli", "categorical", "sbn1", "sbn3", "mixed"}  # models with log_q_score
ENCODER = {"DiscreteVAE": ("encoder_net", "encoder_logits"), "SigmoidBeliefNet": ("inference",),
           "MixedVAE": ("encoder_net", "z_loc", "z_scale")}


def _params(name_or_model, seed=0, scale=0.5):
  """Parameters of ``model.init``'s structure (by ``eval_shape``: no init compile), N(0, scale²)."""
  model = MODELS.get(name_or_model) if isinstance(name_or_model, str) else name_or_model
  shapes = jax.eval_shape(model.init, key(0), X)
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda a: jnp.asarray(scale * rng.standard_normal(a.shape), jnp.float32), shapes)


def _extreme(params, value=1e4):
  """Every logits layer: zero kernel, bias ±``value`` (alternating); prior logits ∓``value``."""
  def visit(path, a):
    names = [getattr(p, "key", "") for p in path]
    alternating = value * np.where(np.arange(a.size) % 2 == 0, 1.0, -1.0).reshape(a.shape)
    if names[-1] == "prior_logits":
      return jnp.asarray(-alternating, a.dtype)
    if any("logits" in n for n in names[:-1]):
      return jnp.asarray(0.0 * alternating if names[-1] == "kernel" else alternating, a.dtype)
    return a
  return jax.tree_util.tree_map_with_path(visit, params)


def _leaf_shapes(model, k):
  if isinstance(model, SigmoidBeliefNet):
    return tuple((k, B, d) for d in model.layers)
  if isinstance(model, MixedVAE):
    return {"d": (k, B, C), "z": (k, B, 2)}
  return (k, B, *model.latent_shape)


def _groups(model):
  if isinstance(model, SigmoidBeliefNet):
    return len(model.layers)
  if isinstance(model, MixedVAE):
    return 1 + model.latent_dim
  return D


def _discrete_leaves(model, z):
  if isinstance(model, MixedVAE):
    return [z["d"]]
  if isinstance(model, SigmoidBeliefNet) or model.relaxation is None:
    return jax.tree_util.tree_leaves(z)
  return []


def _references(model, params, density, prop):
  """Independent computations (jvae.distributions.discrete, distrax) of what ``prop`` (K = 3, at
  ``density``) and its joint should hold."""
  def lik(x_logits):
    return distrax.Independent(distrax.Bernoulli(logits=x_logits), 1).log_prob(X)

  z = prop.z
  if isinstance(model, DiscreteVAE):
    logits = model.apply(params, X, method=DiscreteVAE.encode)
    d_logits = model.apply(density, X, method=DiscreteVAE.encode)
    prior = model.apply(params, method=DiscreteVAE.prior_logits)
    cat = model.latent == "categorical"
    tau, lam = model.temperatures
    ref = {"kl_groups": (dd.categorical_kl if cat else dd.bernoulli_kl)(logits, prior)}
    if model.relaxation is None:
      lp = dd.categorical_log_prob if cat else dd.bernoulli_log_prob
      ref.update(log_q_groups=lp(z, d_logits), log_prior_groups=lp(z, prior),
                 log_q_score=lp(z, logits).sum(-1))
      seen = z
    else:
      lp = dd.exp_concrete_log_prob if cat else dd.binary_concrete_log_prob
      ref.update(log_q_groups=lp(z, d_logits, tau), log_prior_groups=lp(z, prior, lam))
      if model.relaxation == "concrete":
        seen = jnp.exp(z) if cat else jax.nn.sigmoid(z)
      else:
        seen = dd.hard_categorical(z) if cat else dd.hard_bernoulli(z)
    ref["log_lik"] = lik(model.apply(params, seen, method=DiscreteVAE.decode))
    return ref
  if isinstance(model, SigmoidBeliefNet):
    def q_groups(m, zs):
      inputs = [X, *zs[:-1]]
      return jnp.stack([dd.bernoulli_log_prob(h, net(i), event_ndims=1)
                        for net, i, h in zip(m.inference, inputs, zs, strict=True)], -1)

    def joint(m, zs):
      p = [dd.bernoulli_log_prob(zs[i - 1], m.generative[i](zs[i]), event_ndims=1)
           for i in range(1, len(zs))]
      p.append(dd.bernoulli_log_prob(zs[-1], m.top_logits, event_ndims=1))
      return jnp.stack(p, -1), lik(m.generative[0](zs[0]))

    p_groups, log_lik = model.apply(params, z, method=joint)
    return {"log_q_groups": model.apply(density, z, method=q_groups),
            "log_q_score": model.apply(params, z, method=q_groups).sum(-1),
            "log_prior_groups": p_groups, "log_lik": log_lik}
  _, logits = model.apply(params, X, method=MixedVAE.encode)
  h_d, logits_d = model.apply(density, X, method=MixedVAE.encode)
  loc, scale = model.apply(density, h_d, z["d"], method=MixedVAE.q_z)
  gauss_q = distrax.MultivariateNormalDiag(loc, scale).log_prob(z["z"])
  gauss_p = distrax.MultivariateNormalDiag(jnp.zeros(2), jnp.ones(2)).log_prob(z["z"])
  x_logits = model.apply(params, z["z"], z["d"], method=MixedVAE.decode)
  return {"log_q_score": dd.categorical_log_prob(z["d"], logits),
          "log_q": dd.categorical_log_prob(z["d"], logits_d) + gauss_q,
          "log_prior": dd.categorical_log_prob(z["d"], jnp.zeros(C)) + gauss_p,
          "log_lik": lik(x_logits)}


@functools.cache
def _program(name):
  """One jitted program per model with everything the tests read (compiled once, reused with
  other parameters)."""
  model = MODELS[name]

  def run(params, density):
    out = {}
    prop = model.propose(params, key(1), Batch(X), num_samples=3, density_params=density)
    out["k3"] = prop, model.log_joint(params, Batch(X), prop.z)
    out["ref"] = _references(model, params, density, prop)

    def parts(p):  # one proposal (log q at stopped params) for the MC KL and every gradient path
      prop = model.propose(p, key(4), X, num_samples=K_MC, density_params=jax.lax.stop_gradient(p))
      joint = model.log_joint(p, X, prop.z)
      values = {"pathwise": jnp.sum(joint.log_lik + joint.log_prior - prop.log_q)}
      if name in DISCRETE:
        values["score"] = jnp.sum(prop.log_q_score)
        values["discrete"] = sum(jnp.sum(h) for h in _discrete_leaves(model, prop.z))
      return values, (prop.kl, prop.log_q - joint.log_prior, prop.log_q_score, prop.log_q)

    values, pullback, out["mc"] = jax.vjp(parts, params, has_aux=True)
    out["value"] = values
    for k in values:
      out[f"grad_{k}"] = pullback({j: jnp.float32(j == k) for j in values})[0]
    return out

  return jit(run)


def _run_at(name, params):
  return _program(name)(params, jax.tree_util.tree_map(lambda a: 0.9 * a, params))


@functools.cache
def _run(name):
  """The program's results at the default parameters (shared by the tests of one model)."""
  return _run_at(name, _params(name))


def _max_abs(tree, prefixes=None):
  leaves = [v for k, v in tree["params"].items()
            if prefixes is None or any(k.startswith(p) for p in prefixes)]
  return max(float(np.abs(a).max()) for a in jax.tree_util.tree_leaves(leaves))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_contract_shapes(name):
  """Shapes for K = 1 and 3 (traced by eval_shape: no compile), then values of the compiled
  program's K = 3 proposal: groups sum to the totals, log_q_score present iff discrete sites."""
  model = MODELS[name]
  check_model(model)
  params = _params(name)
  g = _groups(model)
  for k in (1, 3):
    prop, joint = jax.eval_shape(
        lambda p, k=k: (lambda pr: (pr, model.log_joint(p, Batch(X), pr.z)))(
            model.propose(p, key(1), Batch(X), num_samples=k)), params)
    shapes = jax.tree_util.tree_map(lambda a: a.shape, prop.z)
    assert shapes == _leaf_shapes(model, k), (k, shapes)
    for a in (prop.log_q, joint.log_lik, joint.log_prior):
      assert a.shape == (k, B)
    assert prop.log_q_groups.shape == joint.log_prior_groups.shape == (k, B, g)
    if name in DISCRETE:
      assert prop.log_q_score is not None and prop.log_q_score.shape == (k, B)
    else:
      assert prop.log_q_score is None
    if name == "sbn3":  # no closed-form KL of a 3-layer hierarchy
      assert prop.kl is None and prop.kl_groups is None
    else:
      assert prop.kl.shape == (B,) and prop.kl_groups.shape[0] == B
  assert jax.eval_shape(lambda p: model.generate(p, key(2), 2), params).shape == (2, P)

  out = _run(name)
  prop, joint = out["k3"]
  for a in (prop.log_q, joint.log_lik, joint.log_prior):
    assert np.all(np.isfinite(a))
  np.testing.assert_allclose(prop.log_q_groups.sum(-1), prop.log_q, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(joint.log_prior_groups.sum(-1), joint.log_prior, rtol=1e-5,
                             atol=1e-5)
  if prop.kl is not None:
    np.testing.assert_allclose(prop.kl_groups.sum(-1), prop.kl, rtol=1e-5, atol=1e-6)
  for leaf in _discrete_leaves(model, prop.z):
    assert set(np.unique(np.asarray(leaf))) <= {0.0, 1.0}
  if name in DISCRETE - {"mixed"}:  # at params, log q is the score term
    _, _, score, log_q = out["mc"]
    np.testing.assert_allclose(score, log_q, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_densities_match_independent_computations(name):
  """log q at density_params, log_q_score at params, log p, log p(x|z), closed-form KL."""
  out = _run(name)
  prop, joint = out["k3"]
  fields = {**prop._asdict(), **joint._asdict()}
  for field, expected in out["ref"].items():
    np.testing.assert_allclose(fields[field], expected, rtol=1e-5, atol=1e-4, err_msg=field)
  if name in DISCRETE:
    assert not np.allclose(prop.log_q_score, prop.log_q)  # density_params ≠ params


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"sbn3"}))
def test_closed_form_kl_matches_monte_carlo(name):
  """E_q[log q − log p] over 4000 samples is the closed-form ``kl`` within 4 standard errors
  (for the relaxed models, ``kl`` is the *discrete* KL, below the relaxed one: data
  processing)."""
  kl, diff, _, _ = _run(name)["mc"]
  se = diff.std(0) / math.sqrt(diff.shape[0])
  if name in DISCRETE:
    np.testing.assert_array_less(np.abs(diff.mean(0) - kl), 4 * se + 1e-6)
  else:
    np.testing.assert_array_less(kl, diff.mean(0) + 4 * se)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradient_paths(name):
  """Discrete samples carry no gradient and the pathwise part misses q's discrete logits; the
  score term reaches the encoder; relaxed and Gaussian samples are reparameterized."""
  model = MODELS[name]
  out = _run(name)
  encoder = ENCODER[type(model).__name__]
  if name in DISCRETE:
    assert _max_abs(out["grad_discrete"]) == 0.0
    assert _max_abs(out["grad_score"], encoder if name != "mixed" else ("d_logits",)) > 0
  if name in DISCRETE and name != "mixed":
    assert _max_abs(out["grad_pathwise"], encoder) == 0.0
  else:  # the relaxed y, or the Gaussian z of the mixed model, carry q's gradient
    assert _max_abs(out["grad_pathwise"], encoder) > 0
  if name == "mixed":
    assert _max_abs(out["grad_pathwise"], ("d_logits",)) == 0.0


@pytest.mark.parametrize("name", sorted(MODELS))
def test_extreme_logits_give_finite_values_and_gradients(name):
  """Every logits layer at ±1e4 (and the prior's): values, KLs and every gradient finite."""
  out = _run_at(name, _extreme(_params(name)))
  for leaf in jax.tree_util.tree_leaves({k: v for k, v in out.items() if k != "ref"}):
    assert np.all(np.isfinite(np.asarray(leaf)))


def test_at_temperature_under_jit_with_a_traced_temperature():
  m, fixed = MODELS["concrete"], MODELS["concrete_categorical"]
  static = _dvae(relaxation="concrete", temperature=0.3)
  params, params_c = _params("concrete"), _params("concrete_categorical")

  @jit
  def run(params, params_c, t):
    mt, ft = m.at_temperature(t), fixed.at_temperature(t)
    prop = mt.propose(params, key(8), X, num_samples=2)
    ref = static.propose(params, key(8), X, num_samples=2)
    return (prop.log_q, mt.log_joint(params, X, prop.z).log_prior, mt.temperatures,
            ref.log_q, static.log_joint(params, X, ref.z).log_prior,
            ft.propose(params_c, key(8), X, num_samples=2).log_q, ft.temperatures)

  log_q, log_p, temps, ref_q, ref_p, log_q_c, temps_c = run(params, params_c, jnp.float32(0.3))
  np.testing.assert_allclose(log_q, ref_q, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(log_p, ref_p, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(temps, (0.3, 0.3), rtol=1e-6)  # a None prior temperature follows
  np.testing.assert_allclose(temps_c, (0.3, 0.7), rtol=1e-6)  # a given one stays
  assert np.all(np.isfinite(log_q_c))
  assert m.temperature == 0.5  # the original model is unchanged


def test_relaxed_bound_is_below_the_discrete_elbo():
  """At τ = λ = 0.1 the relaxed ELBO (kl="sample") is below the exact discrete ELBO.

  The discrete ELBO is exact, by enumeration of {0, 1}^4; the relaxed one is a 4000-sample mean.
  With encoder logits ±3 against a uniform prior, KL(Logistic ‖ Logistic) exceeds the discrete
  KL by 0.3–0.8 nats per latent (data processing; τ-independent when τ = λ), while σ(y) is within
  ~0.05 of hard(y) except on a set of small probability at τ = 0.1: the gap is far beyond
  4 standard errors of the estimate.
  """
  discrete, relaxed = _dvae(), _dvae(relaxation="concrete", temperature=0.1, discrete_kl=True)
  params = _params(discrete)
  params["params"]["encoder_logits"]["bias"] = jnp.array([3.0, -3.0, 2.0, -2.5])
  params["params"]["encoder_logits"]["kernel"] *= 0.0
  configs = jnp.asarray(list(itertools.product([0.0, 1.0], repeat=D)))  # (16, D)
  zs = jnp.broadcast_to(configs[:, None], (16, B, D))

  @jit
  def run(params):
    logits = discrete.apply(params, X, method=DiscreteVAE.encode)
    joint = discrete.log_joint(params, X, zs)
    log_q = dd.bernoulli_log_prob(zs, logits, event_ndims=1)
    exact = jnp.sum(jnp.exp(log_q) * (joint.log_lik + joint.log_prior - log_q), 0)
    prop = relaxed.propose(params, key(9), X, num_samples=4000)
    rj = relaxed.log_joint(params, X, prop.z)
    return exact, rj.log_lik + rj.log_prior - prop.log_q, prop.log_q - rj.log_prior, prop.kl

  exact, relaxed_w, relaxed_kl, discrete_kl = run(params)
  se = relaxed_w.std(0) / math.sqrt(relaxed_w.shape[0])
  np.testing.assert_array_less(relaxed_w.mean(0) + 4 * se, exact)
  # and the relaxed KL is above the discrete one (data processing), by more than 4 s.e.
  np.testing.assert_array_less(discrete_kl + 4 * relaxed_kl.std(0) / math.sqrt(4000),
                               relaxed_kl.mean(0))


@pytest.mark.parametrize("kwargs, match", [
    ({"latent": "gaussian"}, "latent"),
    ({"relaxation": "gumbel"}, "relaxation"),
    ({"temperature": 0.0}, "temperature"),
    ({"prior_temperature": -1.0}, "prior_temperature"),
    ({"latent": "categorical", "num_categories": 1}, "num_categories"),
    ({"num_latents": 0}, "num_latents"),
    ({"activation": "swish"}, "activation"),
])
def test_bad_configuration_is_rejected(kwargs, match):
  with pytest.raises(ValueError, match=match):
    _dvae(**kwargs)


def test_bad_inputs_are_rejected():
  m = MODELS["bernoulli"]
  params = _params(m)
  with pytest.raises(ValueError, match=r"x must have shape \(batch, 8\)"):
    m.propose(params, key(1), X[:, :5], num_samples=2)
  with pytest.raises(ValueError, match=r"z must have shape \(K, 3, 4\)"):
    m.log_joint(params, X, jnp.zeros((2, B, D + 1)))
  with pytest.raises(ValueError, match="num_samples"):
    m.propose(params, key(1), X, num_samples=0)
  sbn = MODELS["sbn3"]
  with pytest.raises(ValueError, match="tuple"):
    sbn.log_joint(_params(sbn), X, jnp.zeros((2, B, D)))
  with pytest.raises(ValueError, match="layers"):
    SigmoidBeliefNet(event_shape=(P,), layers=())
  mixed = MODELS["mixed"]
  with pytest.raises(ValueError, match="keys 'd' and 'z'"):
    mixed.log_joint(_params(mixed), X, (jnp.zeros((2, B, C)), jnp.zeros((2, B, 2))))
