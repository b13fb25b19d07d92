"""The conditional VAE (Sohn et al. 2015): contract, equivalence with a VAE, training, helpers.

Each test compiles few jitted functions, to stay fast on CPU.
"""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import sklearn.datasets

import jvae
from jvae.io import data as jdata
from jvae.io.conditional_data import (
    class_conditional_grid,
    digits_conditional,
    merge_quadrants,
    mnist_quadrants,
    one_hot_labels,
    quadrant_mask,
    quadrant_split,
)
from jvae.models.conditional import ConditionalVAE, cvae
from jvae.models.contract import Batch, LatentModel
from jvae.models.priors import LearnedGaussianPrior, inverse_softplus_scale

EVENT, COND, LATENT, HIDDEN, N, K = (64,), 10, 3, (8,), 4, 5


def _batch(c_row=None, seed=0):
  x = jax.random.bernoulli(jax.random.key(seed), 0.4, (N, *EVENT)).astype(jnp.float32)
  if c_row is None:
    c = jax.nn.one_hot(jnp.arange(N) % COND, COND)
  else:
    c = jnp.broadcast_to(c_row, (N, COND))
  return Batch(x, c)


def _model():
  return cvae(event_shape=EVENT, cond_dim=COND, latent_dim=LATENT, hidden=HIDDEN,
              prior_hidden=(6,))


# ------------------------------------------------------------------------------------------------
# With c held constant, the CVAE is an unconditional VAE with a learned Gaussian prior.


def _unconditional(cvae_params, prior_loc, prior_scale, zero_c_rows: bool):
  """A VAE whose networks equal the CVAE's at constant c, and its params.

  The CVAE's first encoder/decoder kernels are ``[W_x; W_c]``: the VAE takes W_x, and with
  ``zero_c_rows`` the CVAE's W_c is zeroed (so any constant c contributes nothing); else c = 0.
  The VAE's LearnedGaussianPrior is set to p(z|c).
  """
  base = jvae.mlp_vae(event_shape=EVENT, latent_dim=LATENT, hidden=HIDDEN)
  vae = jvae.VAE(base.encoder, base.decoder, prior=LearnedGaussianPrior(LATENT))
  p = jax.tree_util.tree_map(lambda a: a, cvae_params["params"])
  cut = {"encoder": EVENT[0], "decoder": LATENT}
  vae_p = {}
  for part, n in cut.items():
    kernel = p[part]["network"]["dense_0"]["kernel"]
    if zero_c_rows:
      kernel = kernel.at[n:].set(0.0)
      p[part]["network"]["dense_0"]["kernel"] = kernel
    vae_p[part] = {**p[part], "network": {"dense_0": {**p[part]["network"]["dense_0"],
                                                      "kernel": kernel[:n]}}}
  vae_p["prior"] = {"loc": prior_loc, "scale": inverse_softplus_scale(prior_scale)}
  return vae, {"params": vae_p}, {"params": p}


def _everything(model, params, batch, key):
  """Contract outputs and bounds of a model on a batch (same keys for every model)."""
  prop = model.propose(params, key, batch, num_samples=K)
  prop1 = model.propose(params, key, batch, num_samples=1)
  other = jax.tree_util.tree_map(lambda a: a * 1.1, params)
  stl = model.propose(params, key, batch, num_samples=K, density_params=other)
  return dict(
      z=prop.z, log_q=prop.log_q, log_q_groups=prop.log_q_groups, kl=prop.kl,
      kl_groups=prop.kl_groups, z1=prop1.z, log_q1=prop1.log_q, stl_log_q=stl.log_q,
      stl_z=stl.z, joint=model.log_joint(params, batch, prop.z),
      elbo=jvae.elbo(model)(params, key, batch),
      iwae=jvae.iwae(model, num_samples=K)(params, key, batch))


@pytest.fixture(scope="module")
def equivalence():
  model = _model()
  c0 = jax.nn.one_hot(3, COND)
  key = jax.random.key(7)

  @jax.jit
  def run(init_key):
    params = model.init(init_key, _batch())
    out = {}
    for name, c_row, zero in (("zero_c", jnp.zeros(COND), False), ("const_c", c0, True)):
      batch = _batch(c_row)
      prior = model.apply(params, batch.c, method=ConditionalVAE.prior_distribution)
      vae, vae_params, cvae_params = _unconditional(params, prior.loc[0], prior.scale_diag[0],
                                                    zero)
      out[name] = (_everything(model, cvae_params, batch, key),
                   _everything(vae, vae_params, batch.x, key))
    return out

  return run(jax.random.key(0))


@pytest.mark.parametrize("case", ["zero_c", "const_c"])
def test_cvae_with_constant_c_equals_the_unconditional_vae(equivalence, case):
  cond, uncond = equivalence[case]
  assert cond["z"].shape == (K, N, LATENT) and cond["log_q"].shape == (K, N)
  assert cond["joint"].log_lik.shape == (K, N) and cond["kl_groups"].shape == (N, LATENT)
  tol = dict(rtol=2e-5, atol=2e-5)
  for name in ("z", "log_q", "log_q_groups", "z1", "log_q1", "stl_z"):
    np.testing.assert_allclose(cond[name], uncond[name], err_msg=name, **tol)
  # The prior parameters go through softplus⁻¹ and back: slightly looser where they enter.
  tol = dict(rtol=1e-4, atol=1e-4)
  for name in ("kl", "kl_groups", "elbo", "iwae"):
    np.testing.assert_allclose(cond[name], uncond[name], err_msg=name, **tol)
  for part in ("log_lik", "log_prior", "log_prior_groups"):
    np.testing.assert_allclose(getattr(cond["joint"], part), getattr(uncond["joint"], part),
                               err_msg=part, **tol)
  # The STL density params (×1.1) change log q but not z.
  assert np.abs(cond["stl_log_q"] - cond["log_q"]).max() > 1e-3
  np.testing.assert_allclose(cond["stl_log_q"], uncond["stl_log_q"], rtol=1e-4, atol=1e-4)


def test_cvae_pieces_are_consistent(equivalence):
  cond, _ = equivalence["const_c"]
  np.testing.assert_allclose(cond["log_q_groups"].sum(-1), cond["log_q"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(cond["joint"].log_prior_groups.sum(-1), cond["joint"].log_prior,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(cond["kl_groups"].sum(-1), cond["kl"], rtol=1e-5, atol=1e-5)
  elbo_sample = jnp.mean(cond["joint"].log_lik + cond["joint"].log_prior - cond["log_q"], 0)
  assert np.all(cond["iwae"] >= elbo_sample - 1e-4)


def test_cvae_analytic_kl_methods_match_the_proposal():
  model, batch = _model(), _batch()

  @jax.jit
  def run(key):
    params = model.init(key, batch)
    prop = model.propose(params, key, batch, num_samples=1)
    q = model.apply(params, batch.x, batch.c, method=ConditionalVAE.encode)
    p = model.apply(params, batch.c, method=ConditionalVAE.prior_distribution)
    return (model.analytic_kl(params, batch), model.analytic_kl_groups(params, batch), prop.kl,
            prop.kl_groups, jvae.analytic_kl(q, p))

  kl, groups, prop_kl, prop_groups, want = run(jax.random.key(0))
  assert kl.shape == (N,) and groups.shape == (N, LATENT)
  np.testing.assert_allclose(kl, want, rtol=1e-6)
  np.testing.assert_allclose(prop_kl, kl, rtol=1e-6)
  np.testing.assert_allclose(prop_groups, groups, rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Bad input


def test_bad_conditioning_is_a_clear_error():
  model, batch = _model(), _batch()
  params = jax.eval_shape(model.init, jax.random.key(0), batch)
  key = jax.random.key(1)
  z = jnp.zeros((1, N, LATENT))
  bad = {
      r"not an array of shape \(4, 64\)": batch.x,
      "c=None": Batch(batch.x),
      r"shape \(batch, 10\).*got \(4, 7\)": Batch(batch.x, batch.c[:, :7]),
      r"shape \(batch, 10\).*got \(4,\)": Batch(batch.x, batch.c[:, 0]),
      r"c has 3 rows but x has 4": Batch(batch.x, batch.c[:3]),
  }
  for match, b in bad.items():
    with pytest.raises(ValueError, match=match):
      model.propose(params, key, b, num_samples=2)
    with pytest.raises(ValueError, match=match):
      model.log_joint(params, b, z)
    with pytest.raises(ValueError, match=match):
      jax.eval_shape(model.init, key, b)
  with pytest.raises(ValueError, match="conditioned on c"):
    jax.eval_shape(jvae.elbo(model), params, key, batch.x)
  with pytest.raises(ValueError, match="conditioned on c"):
    model.analytic_kl(params, Batch(batch.x))
  with pytest.raises(ValueError, match="x must have shape"):
    jax.eval_shape(model.init, key, Batch(batch.x[:, :10], batch.c))
  with pytest.raises(ValueError, match="likelihood"):
    cvae(event_shape=EVENT, cond_dim=COND, likelihood="poisson")
  with pytest.raises(ValueError, match="cond_dim"):
    cvae(event_shape=EVENT, cond_dim=0)


# ------------------------------------------------------------------------------------------------
# Training on labelled digits, and the class-conditional grid.


@pytest.fixture(scope="module")
def digits():
  return digits_conditional()


def test_digits_conditional_matches_load_digits_and_sklearn(digits):
  ref = jdata.load_digits()
  labels = sklearn.datasets.load_digits().target[np.random.default_rng(0).permutation(1797)]
  np.testing.assert_array_equal(digits.train.x, ref.train)
  np.testing.assert_array_equal(digits.test.x, ref.test)
  assert digits.valid.x.shape == (300, 64) and digits.valid.c.shape == (300, 10)
  assert digits.event_shape == (64,) and digits.cond_dim == 10
  np.testing.assert_array_equal(digits.train.c.argmax(1), labels[:1197])
  np.testing.assert_array_equal(digits.test.c.argmax(1), labels[-300:])
  np.testing.assert_array_equal(digits.train.c.sum(1), 1.0)


def test_cvae_trains_on_labelled_digits(digits):
  model = cvae(event_shape=(64,), cond_dim=10, latent_dim=4, hidden=(32,), prior_hidden=(16,))
  train = jax.tree_util.tree_map(jnp.asarray, digits.train)
  valid = jax.tree_util.tree_map(jnp.asarray, digits.valid)
  objective = jvae.elbo(model)
  opt = optax.adam(1e-2)
  steps, batch_size = 300, 100

  @jax.jit
  def train_run(key):
    params = model.init(key, jax.tree_util.tree_map(lambda a: a[:2], train))

    def step(carry, key):
      params, state = carry
      idx = jax.random.randint(key, (batch_size,), 0, train.x.shape[0])
      b = jax.tree_util.tree_map(lambda a: a[idx], train)
      grads = jax.grad(lambda p: -jnp.mean(objective(p, key, b)))(params)
      updates, state = opt.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None

    init = params
    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)),
                                  jax.random.split(jax.random.key(1), steps))
    return init, params

  @jax.jit
  def bound(params, c):
    return jnp.mean(jvae.iwae(model, num_samples=10)(params, jax.random.key(2),
                                                     Batch(valid.x, c)))

  before, after = train_run(jax.random.key(0))
  b0, b1 = float(bound(before, valid.c)), float(bound(after, valid.c))
  assert b1 > b0 + 10.0, (b0, b1)  # from ≈ −45 nats to ≈ −16
  # The labels are used: the bound drops when they are shuffled.
  shuffled = float(bound(after, valid.c[np.random.default_rng(0).permutation(300)]))
  assert b1 > shuffled + 5.0, (b1, shuffled)  # ≈ −30 with shuffled labels

  grid = class_conditional_grid(model, after, jax.random.key(3), num_classes=10, per_class=3)
  assert isinstance(grid, np.ndarray) and grid.shape == (30, 8, 8)
  assert grid.min() >= 0.0 and grid.max() <= 1.0
  tiled = jvae.io.images.tile(grid, ncols=3)
  assert tiled.shape == (10 * 9 + 1, 3 * 9 + 1)
  with pytest.raises(ValueError, match="num_classes"):
    class_conditional_grid(model, after, jax.random.key(3), num_classes=5, per_class=3)


def test_grid_with_an_unconditional_prior():
  base = _model()
  model = ConditionalVAE(base.encoder, base.decoder, LearnedGaussianPrior(LATENT), COND)
  params = jax.jit(model.init)(jax.random.key(0), _batch())
  grid = class_conditional_grid(model, params, jax.random.key(1), COND, 2)
  assert grid.shape == (2 * COND, 8, 8)


# ------------------------------------------------------------------------------------------------
# Quadrants and labels


def test_quadrant_split_and_merge():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 2, (3, 28, 28)).astype(np.float32)
  x, c, mask = quadrant_split(images, observed=(0,))
  assert x.shape == (3, 588) and c.shape == (3, 196) and mask.shape == (28, 28)
  np.testing.assert_array_equal(c, images[:, :14, :14].reshape(3, -1))
  np.testing.assert_array_equal(merge_quadrants(x, c, mask), images)
  x2, c2, mask2 = quadrant_split(images.reshape(3, -1), observed=(1, 2, 3))
  assert x2.shape == (3, 196) and c2.shape == (3, 588)
  np.testing.assert_array_equal(x2, c)  # the one unobserved quadrant is the top-left
  np.testing.assert_array_equal(mask2, ~mask)
  m = quadrant_mask((8, 8), (3,))
  assert m[4:, 4:].all() and m.sum() == 16
  for bad in ((), (0, 1, 2, 3), (4,), (1, 1)):
    with pytest.raises(ValueError, match="quadrants"):
      quadrant_mask((28, 28), bad)
  with pytest.raises(ValueError, match="square"):
    quadrant_split(np.zeros((2, 10)))
  with pytest.raises(ValueError, match="even"):
    quadrant_split(np.zeros((2, 5, 5)))


def test_mnist_quadrants_from_a_dataset():
  rng = np.random.default_rng(1)
  splits = [rng.integers(0, 2, (n, 784)).astype(np.float32) for n in (5, 3, 2)]
  ds = jdata.Dataset("binarized_mnist", *splits, (784,), (28, 28))
  out = mnist_quadrants(ds, observed=(0, 1))
  assert out.train.x.shape == (5, 392) and out.train.c.shape == (5, 392)
  assert out.test.x.shape == (2, 392) and out.event_shape == (392,) and out.cond_dim == 392
  images = merge_quadrants(out.valid.x, out.valid.c, quadrant_mask((28, 28), (0, 1)))
  np.testing.assert_array_equal(images.reshape(3, -1), splits[1])
  np.testing.assert_array_equal(out.train.c, splits[0].reshape(5, 28, 28)[:, :14].reshape(5, -1))
  flat = jdata.Dataset("x", *splits, (784,), None)
  with pytest.raises(ValueError, match="image shape"):
    mnist_quadrants(flat)


def test_one_hot_labels():
  got = one_hot_labels(np.array([2, 0, 1]), 3)
  np.testing.assert_array_equal(got, np.eye(3, dtype=np.float32)[[2, 0, 1]])
  assert got.dtype == np.float32
  with pytest.raises(ValueError, match=r"\[0, 3\)"):
    one_hot_labels(np.array([0, 3]), 3)
  with pytest.raises(ValueError, match="integer"):
    one_hot_labels(np.array([0.5]), 3)


def test_cvae_distributions():
  model, batch = _model(), _batch()
  kinds = {}

  def run(key):
    params = model.init(key, batch)
    q = model.apply(params, batch.x, batch.c, method=ConditionalVAE.encode)
    p = model.apply(params, batch.c, method=ConditionalVAE.prior_distribution)
    px = model.apply(params, jnp.zeros((2, N, LATENT)), batch.c, method=ConditionalVAE.decode)
    kinds.update(q=(type(q), q.batch_shape), p=(type(p), p.batch_shape),
                 px=(px.batch_shape, px.event_shape))
    return q.loc

  jax.eval_shape(run, jax.random.key(0))
  assert kinds["q"] == (distrax.MultivariateNormalDiag, (N,))
  assert kinds["p"] == (distrax.MultivariateNormalDiag, (N,))
  assert tuple(kinds["px"][0]) == (2, N) and tuple(kinds["px"][1]) == EVENT
  assert model.latent_dim == LATENT and model.event_shape == EVENT and model.cond_dim == COND
  assert isinstance(model, LatentModel)
