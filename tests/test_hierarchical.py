"""Models with several stochastic layers: the two-layer linear-Gaussian oracle, HierarchicalVAE
(bottom-up q, Burda et al. 2015) and LadderVAE (Sønderby et al. 2016), all through the model
contract and the generic objectives.

Everything uses fixed keys, so each statistical check is deterministic; the tolerances (and why
they hold) are stated next to each assertion. Each fixture is one jitted computation: compiling a
few large programs costs much less than many small ones (or eager op-by-op dispatch) on a 2-core
machine, and the tests then only read its results.
"""

import functools
import math

import chex
import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jvae
from jvae.models.hierarchical import HierarchicalVAE
from jvae.models.ladder import LadderVAE, precision_weighted
from jvae.models.oracles import TwoLayerLinearGaussian
from jvae.models.presets import PRESETS, burda2015_2layer, lvae

D, LATENTS = 4, (3, 2)


def key(seed: int):
  """A typed key of the ``rbg`` PRNG: much cheaper to compile than threefry; any key works."""
  return jax.random.key(seed, impl="rbg")


# LLVM's backend optimisations are most of XLA's CPU compile time and buy nothing for these tiny
# programs (results agree to ~1e-6): compile without them.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _flat(tree):
  return jnp.concatenate([jnp.ravel(a) for a in jax.tree_util.tree_leaves(tree)])


def _mean_se(v):
  return jnp.mean(v, 0), jnp.std(v, 0) / math.sqrt(v.shape[0])


def _per_key(f, params, keys, x, part=None):
  """For every key: f's values ``(batch,)`` and the flattened gradient of their sum (of the
  ``part`` subtree of params, if given), from one forward and backward pass."""
  def value_and_grad(k):
    (_, values), g = jax.value_and_grad(lambda p: (lambda v: (jnp.sum(v), v))(f(p, k, x)),
                                        has_aux=True)(params)
    return values, _flat(g if part is None else g[part])
  return jax.vmap(value_and_grad)(keys)


# -- the two-layer linear-Gaussian oracle --------------------------------------------------------


def _oracle(model: TwoLayerLinearGaussian):
  """(generative params + mismatched q, exact-posterior params, x ``(3, D)``)."""
  params = model.init(key(0))
  exact = model.exact_posterior_params(params)
  # A mismatched q close enough to p(z|x) for 5000 importance samples to be reliable: every
  # parameter of the exact conditionals perturbed by N(0, 0.15²).
  noise = iter(jax.random.split(key(1), 64))
  mismatched = jax.tree_util.tree_map(
      lambda a: a + 0.15 * jax.random.normal(next(noise), a.shape), exact["encoder"])
  return {**params, "encoder": mismatched}, exact, jax.random.normal(key(2), (3, D))


@pytest.fixture(scope="module", params=("bottom_up", "top_down"))
def at_posterior(request):
  """Bounds and encoder gradients, 4 keys, with q at the exact posterior."""
  model = TwoLayerLinearGaussian(D, LATENTS, noise_scale=0.7, order=request.param)

  @jit
  def run():
    params, exact, x = _oracle(model)
    keys = jax.random.split(key(3), 4)
    out = {name: _per_key(f, exact, keys, x, part="encoder") for name, f in {
        "elbo_stl": jvae.elbo(model, kl="sample", estimator="stl"),
        "iwae5_dreg": jvae.iwae(model, num_samples=5, estimator="dreg")}.items()}
    return {**out, "log_px": model.exact_log_marginal(params, x),
            "exact_elbo": model.exact_elbo(exact, x),
            "posterior": model.exact_posterior(params, x),
            "q_joint": model._q_joint(exact["encoder"], x),
            "affine": model._posterior_affine(params["decoder"])}

  return model, run()


@pytest.fixture(scope="module")
def mismatched():
  """Bottom-up q off the posterior: bounds and gradients over 400 keys, and log_marginal."""
  model = TwoLayerLinearGaussian(D, LATENTS, noise_scale=0.7, order="bottom_up")

  @jit
  def run():
    params, _, x = _oracle(model)
    keys = jax.random.split(key(4), 400)
    out = {name: _per_key(f, params, keys, x) for name, f in {
        "elbo": jvae.elbo(model, kl="sample"),
        "elbo_stl": jvae.elbo(model, kl="sample", estimator="stl"),
        "iwae5": jvae.iwae(model, num_samples=5),
        "iwae5_dreg": jvae.iwae(model, num_samples=5, estimator="dreg")}.items()}
    iwae50 = jvae.iwae(model, num_samples=50)
    return {**out, "iwae50": jax.vmap(lambda k: iwae50(params, k, x))(keys[:200]),
            "log_marginal": jvae.log_marginal(model, num_samples=5000, return_stderr=True)(
                params, key(5), x),
            "log_px": model.exact_log_marginal(params, x),
            "exact_elbo": model.exact_elbo(params, x),
            "exact_grad": _flat(jax.grad(lambda p: jnp.sum(model.exact_elbo(p, x)))(params))}

  return run()


def test_oracle_exact_posterior_factorizations(at_posterior):
  model, r = at_posterior
  # The linear-Gaussian q at exact_posterior_params has p(z1, z2|x) as its joint, in either
  # order (float32 linear algebra on 5×5 matrices: 1e-4).
  for a, b in zip(r["q_joint"], r["posterior"], strict=True):
    np.testing.assert_allclose(a, b, atol=1e-4)
  if model.order == "bottom_up":
    # z2 ⊥ x | z1: the posterior gain of z2 is B times that of z1, so q(z2|z1) needs no x.
    gain, _, cov = r["affine"]
    b = jnp.linalg.solve(cov[:3, :3], cov[:3, 3:]).T
    np.testing.assert_allclose(gain[3:], b @ gain[:3], atol=1e-5)
  np.testing.assert_allclose(r["exact_elbo"], r["log_px"], atol=1e-4)


def test_oracle_every_sample_is_exact_at_the_posterior(at_posterior):
  """With q = p(z|x), log w = log p(x) for every sample: the ELBO and IWAE_5 are log p(x)."""
  _, r = at_posterior
  for name in ("elbo_stl", "iwae5_dreg"):
    values = r[name][0]
    # float32 log-densities of size ~20 through Cholesky solves: 1e-4.
    np.testing.assert_allclose(values, jnp.broadcast_to(r["log_px"], values.shape), atol=1e-4,
                               err_msg=name)


def test_oracle_stl_and_dreg_encoder_gradients_vanish_at_the_posterior(at_posterior):
  """At q = p(z|x) the STL and DReG encoder gradients are 0 for every sample (the reparam one
  is 0 only in mean: the score term). That they are not stopped altogether is checked off the
  posterior, in test_oracle_gradients_match_the_closed_form."""
  _, r = at_posterior
  for name in ("elbo_stl", "iwae5_dreg"):
    # log w − log p(x) is 0 up to float32 rounding for every z, so ∂log w/∂z ≈ 0: 2e-3 on
    # gradients of a sum of 3 log-densities.
    np.testing.assert_allclose(r[name][1], 0.0, atol=2e-3, err_msg=name)


def test_oracle_bounds_are_ordered_and_log_marginal_is_consistent(mismatched):
  r = mismatched
  (e, e_se), (i5, i5_se) = _mean_se(r["elbo"][0]), _mean_se(r["iwae5"][0])
  i50, i50_se = _mean_se(r["iwae50"])
  # The MC ELBO is unbiased for the closed-form E_q[log w] (4 s.e. over 400 keys).
  assert jnp.all(jnp.abs(e - r["exact_elbo"]) < 4 * e_se), (e, r["exact_elbo"], e_se)
  # E[ELBO] < E[IWAE_5] < E[IWAE_50] ≤ log p(x), each gap by more than 2 combined s.e. (or at
  # most 2 s.e. above log p(x) for the last).
  assert jnp.all(i5 - e > 2 * jnp.hypot(e_se, i5_se)), (e, i5)
  assert jnp.all(i50 - i5 > 2 * jnp.hypot(i5_se, i50_se)), (i5, i50)
  assert jnp.all(i50 <= r["log_px"] + 2 * i50_se), (i50, r["log_px"])
  estimate, se = r["log_marginal"]
  # Importance sampling with 5000 draws: within 4 (delta-method) standard errors of log p(x).
  assert jnp.all(jnp.abs(estimate - r["log_px"]) < 4 * se), (estimate, r["log_px"], se)
  assert jnp.all(se < 0.1)


def test_oracle_gradients_match_the_closed_form(mismatched):
  """Reparam and STL ELBO gradients are unbiased for ∇ of the closed-form expected ELBO; the
  reparam and DReG IWAE_5 gradients are unbiased for the same ∇ E[IWAE_5] (no closed form:
  compared with each other, sample by sample)."""
  r = mismatched
  for name in ("elbo", "elbo_stl"):
    mean, se = _mean_se(r[name][1])
    # Each coordinate within 4 s.e. of 400 per-key gradients (+1e-3 for float32 rounding).
    assert jnp.all(jnp.abs(mean - r["exact_grad"]) <= 4 * se + 1e-3), (name, mean, se)
  reparam, dreg = r["iwae5"][1], r["iwae5_dreg"][1]
  mean, se = _mean_se(reparam - dreg)
  # Paired difference of two unbiased estimators: 0 within 4 of its s.e. (+1e-3).
  assert jnp.all(jnp.abs(mean) <= 4 * se + 1e-3), (mean, se)
  # DReG's gradient has less variance than reparam's for q near the posterior.
  assert jnp.sum(jnp.var(dreg, 0)) < jnp.sum(jnp.var(reparam, 0))


def test_oracle_checks_its_inputs():
  with pytest.raises(ValueError, match="order"):
    TwoLayerLinearGaussian(D, LATENTS, order="sideways")
  model = TwoLayerLinearGaussian(D, LATENTS)
  params = jax.eval_shape(model.init, key(0))
  with pytest.raises(ValueError, match=r"x must have shape \(batch, 4\)"):
    jax.eval_shape(lambda p: model.propose(p, key(0), jnp.zeros((2, 5)), num_samples=2), params)
  with pytest.raises(ValueError, match="kl='sample'"):
    jax.eval_shape(lambda p: jvae.elbo(model, kl="analytic")(p, key(0), jnp.zeros((2, D))),
                   params)


# -- HierarchicalVAE and LadderVAE with MLP networks ---------------------------------------------

EVENT, BATCH = 12, 3


def _small(kind: str):
  """Small models covering the heads, likelihoods and depths."""
  return {
      "hvae": lambda: burda2015_2layer(event_shape=(EVENT,), latent_dims=(4, 3),
                                       hidden=((8,), (6,))),
      "hvae_fullcov_3_gaussian": lambda: burda2015_2layer(
          event_shape=(EVENT,), latent_dims=(4, 3, 2), hidden=((8,), (6,), (5,)),
          posterior="fullcov", likelihood="gaussian"),
      "hvae_iaf_1": lambda: burda2015_2layer(event_shape=(EVENT,), latent_dims=(3,),
                                             hidden=((8,),), posterior="iaf", iaf_hidden=(8,),
                                             iaf_steps=1),
      "ladder": lambda: lvae(event_shape=(EVENT,), hidden=(8, 6), latent_dims=(4, 3), depth=1),
      "ladder_3_gaussian": lambda: lvae(event_shape=(EVENT,), hidden=(8, 6, 5),
                                        latent_dims=(4, 3, 2), depth=1, likelihood="gaussian"),
  }[kind]()


def _latent_dims(model) -> tuple[int, ...]:
  if isinstance(model, HierarchicalVAE):
    return tuple(encoder.latent_dim for encoder in model.encoders)
  return tuple(head.latent_dim for head in model.heads)


def _x():
  return (jax.random.uniform(key(10), (BATCH, EVENT)) > 0.5).astype(jnp.float32)


def _contract(model, params, x, sample_sizes):
  """propose (log q re-scored at stop_gradient(params)) and log_joint for each K."""
  out = {}
  for k in sample_sizes:
    p = model.propose(params, key(2), x, num_samples=k,
                      density_params=jax.lax.stop_gradient(params))
    out[k] = (p, model.log_joint(params, x, p.z))
  return out


@pytest.fixture(scope="module", params=("hvae", "ladder"))
def mlp(request):
  """One jitted pass over a 2-layer model: contract outputs for K = 1 and 5, the STL−reparam
  gradient difference, the score term, a free-bits value, and (ladder) layer 1 by hand."""
  kind = request.param
  model = _small(kind)
  method = HierarchicalVAE._log_q if kind == "hvae" else LadderVAE._log_q

  @jit
  def run():
    x = _x()
    params = model.init(key(1), x)
    out = {"params": params, "contract": _contract(model, params, x, (1, 5))}
    # ∇ reparam − ∇ STL of the 1-sample ELBO at the key of the K = 1 contract outputs (so the
    # same z), in one backward pass.
    gap = lambda p: jnp.sum(jvae.elbo(model, kl="sample")(p, key(2), x)
                            - jvae.elbo(model, kl="sample", estimator="stl")(p, key(2), x))
    out["reparam_minus_stl"] = _flat(jax.grad(gap)(params))
    proposal, joint = out["contract"][1]
    z = tuple(zl[0] for zl in jax.lax.stop_gradient(proposal.z))
    log_q = lambda p: jnp.sum(sum(model.apply(p, x, z, method=method)))
    out["score"] = _flat(jax.grad(log_q)(params))
    out["free_bits"] = jvae.elbo(model, kl="sample", free_bits=50.0)(params, key(2), x)
    out["log_lik"] = joint.log_lik[0]
    if kind == "ladder":
      proposal = out["contract"][5][0]
      out["layer1"] = (proposal.log_q_groups[..., 0],
                       model.apply(params, x, *proposal.z, method=_ladder_layer1))
    return out

  return kind, model, run()


def _ladder_layer1(module, x, z1, z2):
  """log q(z_1|z_2, x) written out: N(μ̂_1, σ̂_1²) merged with the top-down p(z_1|z_2)."""
  hat = module.heads[0](module.bottom_up[0](x))
  p = module.top_down[0](z2.reshape(-1, z2.shape[-1]))
  loc, scale = precision_weighted(hat.loc, hat.scale_diag, p.loc.reshape(z1.shape),
                                  p.scale_diag.reshape(z1.shape))
  return distrax.MultivariateNormalDiag(loc, scale).log_prob(z1)


def _check_contract(model, results):
  dims = _latent_dims(model)
  for num_samples, (proposal, joint) in results.items():
    assert isinstance(proposal.z, tuple)
    assert [z.shape for z in proposal.z] == [(num_samples, BATCH, d) for d in dims]
    assert proposal.log_q.shape == joint.log_lik.shape == joint.log_prior.shape \
        == (num_samples, BATCH)
    assert proposal.log_q_groups.shape == joint.log_prior_groups.shape \
        == (num_samples, BATCH, len(dims))
    # The totals are the sums of the per-layer groups (float32 sums: 1e-5 relative).
    np.testing.assert_allclose(proposal.log_q, proposal.log_q_groups.sum(-1), rtol=1e-5)
    np.testing.assert_allclose(joint.log_prior, joint.log_prior_groups.sum(-1), rtol=1e-5)
    assert jnp.all(jnp.isfinite(proposal.log_q)) and jnp.all(jnp.isfinite(joint.log_lik))


def test_contract_shapes_groups_jit_and_eager(mlp):
  _, model, r = mlp
  _check_contract(model, r["contract"])
  # Without jit, and with log q from the sampler rather than re-scored at density_params =
  # stop_gradient(params) on the same z (the STL path): equal up to float32 rounding.
  # (Op-by-op dispatch compiles every primitive on its own: once, for one model and K, is enough
  # to show that nothing depends on tracing.)
  if not isinstance(model, HierarchicalVAE):
    return
  x, params = _x(), r["params"]
  for num_samples in (1,):
    proposal = model.propose(params, key(2), x, num_samples=num_samples)
    eager = (proposal, model.log_joint(params, x, proposal.z))
    for a, b in zip(jax.tree_util.tree_leaves(eager),
                    jax.tree_util.tree_leaves(r["contract"][num_samples]), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["hvae_fullcov_3_gaussian", "hvae_iaf_1", "ladder_3_gaussian"])
def test_contract_shapes_other_heads_and_depths(kind):
  model = _small(kind)

  @jit
  def run():
    x = _x()
    return _contract(model, model.init(key(1), x), x, (5,))

  _check_contract(model, run())


def test_stl_drops_exactly_the_score_term(mlp):
  """∇ reparam − ∇ STL of the 1-sample ELBO = −∇_φ log q_φ(z) at fixed z: the density_params
  path re-scores every layer, with z (and each layer's conditioning) kept differentiable."""
  _, _, r = mlp
  # float32 gradients of O(10) sums: 1e-4.
  np.testing.assert_allclose(r["reparam_minus_stl"], -r["score"], atol=1e-4)
  assert jnp.max(jnp.abs(r["score"])) > 1e-2  # the test is not vacuous


def test_free_bits_act_per_layer(mlp):
  _, _, r = mlp
  # With λ = 50 nats per layer (two layers, each KL far below 50) the free-bits KL is exactly
  # 2 × 50, leaving log p(x|z) − 100 on the same z.
  np.testing.assert_allclose(r["free_bits"], r["log_lik"] - 100.0, rtol=1e-5)


@pytest.mark.parametrize("mlp", ["ladder"], indirect=True)
def test_ladder_top_down_q_uses_the_generative_networks(mlp):
  """q(z_1|z_2, x) is N(μ̂_1, σ̂_1²) merged with p(z_1|z_2) from the shared top-down network."""
  _, _, r = mlp
  np.testing.assert_allclose(*r["layer1"], rtol=1e-5)


def test_precision_weighting_matches_the_precision_form():
  rng = np.random.default_rng(0)
  mh, mp = rng.normal(size=5), rng.normal(size=5)
  sh, sp = rng.uniform(0.1, 2, 5), rng.uniform(0.1, 2, 5)
  loc, scale = precision_weighted(mh, sh, mp, sp)
  var = 1 / (sh ** -2 + sp ** -2)
  np.testing.assert_allclose(scale ** 2, var, rtol=1e-5)
  np.testing.assert_allclose(loc, (mh * sh ** -2 + mp * sp ** -2) * var, rtol=1e-5)


def test_presets_burda2015_2layer_and_lvae_shapes():
  x = jax.ShapeDtypeStruct((2, 784), jnp.float32)
  assert PRESETS["burda2015_2layer"] is burda2015_2layer and PRESETS["lvae"] is lvae
  shapes = jax.eval_shape(burda2015_2layer().init, key(0), x)["params"]
  kernels = lambda tree: [tree[n]["kernel"].shape for n in sorted(tree)]
  # q(z1|x): 784-200-200-100; q(z2|z1): 100-100-100-50.
  assert kernels(shapes["encoders_0"]["network"]) == [(784, 200), (200, 200)]
  assert kernels(shapes["encoders_0"]["head"]) == [(200, 100), (200, 100)]
  assert kernels(shapes["encoders_1"]["network"]) == [(100, 100), (100, 100)]
  assert kernels(shapes["encoders_1"]["head"]) == [(100, 50), (100, 50)]
  # p(z1|z2): 50-100-100-100 (Gaussian); p(x|z1): 100-200-200-784 (Bernoulli).
  assert kernels(shapes["decoders_1"]["network"]) == [(50, 100), (100, 100)]
  assert kernels(shapes["decoders_1"]["head"]) == [(100, 100), (100, 100)]
  assert kernels(shapes["decoders_0"]["network"]) == [(100, 200), (200, 200)]
  assert kernels(shapes["decoders_0"]["head"]) == [(200, 784)]
  dense = lambda i, o: i * o + o
  expected = (dense(784, 200) + dense(200, 200) + 2 * dense(200, 100)
              + dense(100, 100) * 2 + 2 * dense(100, 50)
              + dense(50, 100) + dense(100, 100) + 2 * dense(100, 100)
              + dense(100, 200) + dense(200, 200) + dense(200, 784))
  assert sum(a.size for a in jax.tree_util.tree_leaves(shapes)) == expected
  shapes = jax.eval_shape(lvae().init, key(0), x)["params"]
  assert kernels(shapes["bottom_up_0"]) == [(784, 512), (512, 512)]
  assert kernels(shapes["bottom_up_1"]) == [(512, 256), (256, 256)]
  assert kernels(shapes["heads_0"]) == [(512, 64), (512, 64)]
  assert kernels(shapes["heads_1"]) == [(256, 32), (256, 32)]
  assert kernels(shapes["top_down_0"]["network"]) == [(32, 256), (256, 256)]
  assert kernels(shapes["top_down_0"]["head"]) == [(256, 64), (256, 64)]
  assert kernels(shapes["decoder"]["network"]) == [(64, 512), (512, 512)]
  assert kernels(shapes["decoder"]["head"]) == [(512, 784)]


@pytest.mark.parametrize("kind", ["hvae", "ladder"])
def test_short_training_run_increases_the_bound(kind):
  model = _small(kind)
  objective = jvae.iwae(model, num_samples=3)
  train = jvae.trainer(objective, optax.adam(3e-2), batch_size=32)

  @jit
  def run():
    data = (jax.random.uniform(key(20), (64, EVENT)) < 0.3).astype(jnp.float32)
    state = train.init(model.init(key(0), data[:2]), key(1))
    state, metrics = jax.lax.scan(lambda s, _: train.epoch(s, data), state, None, length=15)
    return metrics["bound"], state.nonfinite

  bounds, nonfinite = run()
  # 15 epochs of 2 Adam steps on 64 binary vectors of 12 pixels (p = 0.3) take the epoch mean
  # of IWAE_3 from about -9 nats (random init) well towards the data entropy (~7.3 nats);
  # 0.5 nats between the first and the last epoch is a safe margin.
  assert bounds[-1] > bounds[0] + 0.5, bounds
  assert int(nonfinite) == 0


@pytest.mark.parametrize("kind", ["hvae", "ladder"])
def test_clear_errors(kind):
  model, x = _small(kind), jax.ShapeDtypeStruct((BATCH, EVENT), jnp.float32)
  params = jax.eval_shape(model.init, key(1), x)
  trace = lambda f: jax.eval_shape(f, params, x)
  z = trace(lambda p, x: model.propose(p, key(0), x, num_samples=2).z)
  with pytest.raises(ValueError, match="kl='sample'"):
    trace(lambda p, x: jvae.elbo(model)(p, key(0), x))  # kl="analytic" is the default
  with pytest.raises(ValueError, match=r"tuple \(z_1, \.\.\., z_L\) of 2 arrays"):
    trace(lambda p, x: model.log_joint(p, x, z[:1]))
  with pytest.raises(ValueError, match="z_2 must have shape"):
    trace(lambda p, x: model.log_joint(p, x, (z[0], jnp.zeros((1, BATCH, 3)))))
  with pytest.raises(ValueError, match=r"x must have shape \(batch, 12\)"):
    trace(lambda p, x: model.propose(p, key(0), jnp.zeros((2, 5)), num_samples=1))
  with pytest.raises(ValueError, match="num_samples"):
    trace(lambda p, x: model.propose(p, key(0), x, num_samples=0))


@pytest.mark.parametrize("kind", ["hvae", "ladder"])
def test_batches_and_top_priors(kind):
  model, x = _small(kind), jax.ShapeDtypeStruct((BATCH, EVENT), jnp.float32)
  params = jax.eval_shape(model.init, key(1), x)
  propose = lambda m, batch: jax.eval_shape(
      lambda p, b: m.propose(p, key(0), b, num_samples=2), params, batch)
  # A jvae.Batch is accepted wherever an array x is.
  assert jax.tree_util.tree_map(lambda a: a.shape, propose(model, jvae.Batch(x))) \
      == jax.tree_util.tree_map(lambda a: a.shape, propose(model, x))
  # A given top prior p(z_L) replaces N(0, I); one of the wrong size is a clear error.
  z = propose(model, x).z
  for size, ok in ((3, True), (5, False)):
    prior = distrax.MultivariateNormalDiag(jnp.full((size,), 0.5), jnp.full((size,), 2.0))
    with_prior = model.clone(prior=prior)
    log_joint = lambda p, x, z, m=with_prior: m.log_joint(p, x, z)
    if ok:
      assert jax.eval_shape(log_joint, params, x, z).log_prior.shape == (2, BATCH)
    else:
      with pytest.raises(ValueError, match=r"top prior p\(z_L\) has event shape \(5,\)"):
        jax.eval_shape(log_joint, params, x, z)


def test_structure_errors():
  x = jax.ShapeDtypeStruct((BATCH, EVENT), jnp.float32)
  good = _small("hvae")
  with pytest.raises(ValueError, match="as many decoders"):
    jax.eval_shape(HierarchicalVAE(good.encoders, good.decoders[:1]).init, key(0), x)
  ladder = _small("ladder")
  fullcov = _small("hvae_fullcov_3_gaussian").encoders[0].head
  bad = LadderVAE(ladder.bottom_up, (fullcov, ladder.heads[1]), ladder.top_down, ladder.decoder)
  with pytest.raises(TypeError, match="diagonal Gaussians"):
    jax.eval_shape(bad.init, key(0), x)


@pytest.mark.parametrize("make", [
    lambda: jvae.burda2015_2layer(event_shape=(16,), hidden=((8,), (8,)), latent_dims=(6, 3)),
    lambda: jvae.lvae(event_shape=(16,), hidden=(8, 8), latent_dims=(6, 3)),
])
def test_generate_and_reconstruct_pictures(make):
  """Ancestral samples from the top layer down (layer sizes differ, so a wrong order fails)."""
  model = make()
  x = (jax.random.uniform(jax.random.key(0), (5, 16)) < 0.5).astype(jnp.float32)
  params = model.init(jax.random.key(1), x)
  means = model.generate(params, jax.random.key(2), 7)
  chex.assert_shape(means, (7, 16))
  assert np.all((np.asarray(means) > 0) & (np.asarray(means) < 1))  # Bernoulli means
  np.testing.assert_array_equal(means, model.generate(params, jax.random.key(2), 7))
  assert not np.array_equal(means, model.generate(params, jax.random.key(3), 7))
  chex.assert_shape(model.reconstruct(params, jax.random.key(2), x), (5, 16))
