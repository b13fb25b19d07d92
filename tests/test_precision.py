"""Mixed precision (jvae.mixed_precision): the low-precision matmul and its gradient against a
float64 oracle of the same rounding, and the wrapped model end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jvae
from jvae.models.precision import low_precision_matmul


def _round(a, dtype):
  return np.asarray(a, np.float32).astype(dtype).astype(np.float64)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_matmul_and_gradient_equal_the_rounded_float64_product(jit, dtype):
  """y = x̃ w̃ and x̄ = ỹ̄ w̃ᵀ, w̄ = x̃ᵀ ỹ̄ with ~ the rounding to dtype, on a (K, batch, m) input;
  float32 accumulation leaves ~1e-6 relative error."""
  np_dtype = jnp.bfloat16 if dtype == jnp.bfloat16 else np.float16  # numpy types, both
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (3, 5, 40))
  w = jax.random.normal(kw, (40, 7)) * 0.3
  g = jax.random.normal(kg, (3, 5, 7))
  f = (lambda x, w: low_precision_matmul(x, w, dtype))
  y, vjp = jax.vjp(jax.jit(f) if jit else f, x, w)
  dx, dw = vjp(g)
  assert y.dtype == dx.dtype == dw.dtype == jnp.float32
  xr, wr, gr = _round(x, np_dtype), _round(w, np_dtype), _round(g, np_dtype)
  np.testing.assert_allclose(y, xr @ wr, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx, gr @ wr.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, np.einsum("kbm,kbn->mn", xr, gr), rtol=1e-5, atol=1e-5)
  # and the rounding is real: the float32 product differs by far more than that
  assert np.max(np.abs(np.asarray(y) - np.asarray(x, np.float64) @ np.asarray(w))) > 1e-3


@pytest.fixture(scope="module")
def setup():
  model = jvae.mlp_vae(event_shape=(12,), latent_dim=3, hidden=(16,))
  x = (jax.random.uniform(jax.random.key(1), (32, 12)) < 0.4).astype(jnp.float32)
  params = model.init(jax.random.key(2), x[:2])
  return model, jvae.mixed_precision(model), params, x


def test_wrapped_model_has_the_same_params_and_a_rounded_bound(setup):
  model, mixed, params, x = setup
  assert jax.tree_util.tree_structure(mixed.init(jax.random.key(2), x[:2])) == \
      jax.tree_util.tree_structure(params)
  for a, b in zip(jax.tree_util.tree_leaves(mixed.init(jax.random.key(2), x[:2])),
                  jax.tree_util.tree_leaves(params), strict=True):
    np.testing.assert_array_equal(a, b)
  key = jax.random.key(3)
  full = jvae.iwae(model, num_samples=8)(params, key, x)
  low = jvae.iwae(mixed, num_samples=8)(params, key, x)
  diff = np.abs(np.asarray(low) - np.asarray(full))
  assert low.dtype == jnp.float32 and low.shape == (32,)
  assert 0 < diff.max() < 0.1  # bf16 operands move each bound a little, never a lot
  # bf16 dots are really in the program, and only in the wrapped one
  assert "bf16" in jax.jit(jvae.elbo(mixed)).lower(params, key, x).as_text()
  assert "bf16" not in jax.jit(jvae.elbo(model)).lower(params, key, x).as_text()


def test_wrapped_model_trains_under_jit_and_vmap(setup):
  model, mixed, params, x = setup
  tr = jvae.trainer(jvae.elbo(mixed), optax.adam(1e-2), batch_size=8)
  state = tr.init(params, jax.random.key(4))
  state, m = jax.jit(tr.epoch)(state, x)
  assert np.isfinite(float(m["bound"])) and int(state.nonfinite) == 0
  assert all(p.dtype == jnp.float32 and np.all(np.isfinite(p))
             for p in jax.tree_util.tree_leaves(state.params))
  keys = jax.random.split(jax.random.key(6), 3)
  per_key = jax.vmap(lambda k: jvae.elbo(mixed)(params, k, x))(keys)
  assert per_key.shape == (3, 32) and np.all(np.isfinite(per_key))
  assert mixed.encoder is model.encoder  # submodules and data as they are
  # the optional methods are the wrapped model's (here the decoder, through apply)
  z = jnp.zeros((1, 32, 3))
  assert np.allclose(mixed.log_joint(params, x, z).log_lik,
                     model.log_joint(params, x, z).log_lik, atol=0.1)


def test_mixed_precision_rejects_bad_input(setup):
  model = setup[0]
  with pytest.raises(ValueError, match=r"dtype must be one of \['bfloat16', 'float16'\], got "
                     r"'float32'"):
    jvae.mixed_precision(model, dtype="float32")
  with pytest.raises(ValueError, match="dtype must be one of"):
    jvae.mixed_precision(model, dtype=object())
  with pytest.raises(TypeError):
    jvae.mixed_precision(object())
  twice = jvae.mixed_precision(jvae.mixed_precision(model), dtype="float16")
  assert twice.model is model and twice.dtype == jnp.float16


def test_cli_trains_in_low_precision_and_reports_float32_bounds(tmp_path):
  """``jvae train --matmul-precision bfloat16``: the training objective is the wrapped model's
  bound, validation is the float32 model's, on the same parameters; a tiny run ends to end, its
  config records the precision, and a run saved before the option reads as float32."""
  from jvae.cli import args as cli_args
  from jvae.cli import build
  from jvae.cli import main as cli_main  # the function
  from jvae.cli import run as r

  parse = cli_args.build_parser().parse_args
  tiny = ["--hidden", "16", "--latent-dim", "2", "--epochs", "1", "--no-progress"]
  cfg = r._config_from_args(parse(["train", *tiny, "--matmul-precision", "bfloat16"]))
  run = r.Run(cfg)
  params = jax.tree_util.tree_map(lambda a: a[0], run.init_state.best_params)
  x = jnp.asarray(build.take(run.data.train, slice(0, 20)))
  key = jax.random.key(3)
  low = jvae.elbo(jvae.mixed_precision(run.model))(params, key, x)
  full = jvae.elbo(run.model)(params, key, x)
  assert float(jnp.max(jnp.abs(low - full))) > 1e-4  # the rounding is visible in the bound
  np.testing.assert_array_equal(run.objective(params, key, x), low)
  np.testing.assert_array_equal(run.valid_bound(params, key, x), full)

  out = tmp_path / "bf16"
  assert cli_main(["train", *tiny, "--matmul-precision", "bfloat16", "--out", str(out)]) == 0
  saved = json.loads((out / "config.json").read_text())
  assert saved["matmul_precision"] == "bfloat16"
  assert np.isfinite(json.loads((out / "summary.json").read_text())["per_seed"]["elbo"][0])
  old = {k: v for k, v in saved.items() if k != "matmul_precision"}
  assert build.complete_config(old, r.CONFIG_KEYS)["matmul_precision"] == "float32"
  with pytest.raises(SystemExit):
    parse(["train", "--matmul-precision", "tf32"])
