"""``jvae train --data mnist-dynamic|omniglot|fashion_mnist|frey``, on tiny mirrors made by
``tests/test_datasets.py``'s fixtures (``file://`` URLs, patched digests), run in this process."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jvae.cli import build
from jvae.cli.args import UsageError
from jvae.io import datasets
from jvae.io.semi_supervised import labelled_semi_supervised
from jvae.cli.main import main as jvae_main
from jvae.cli.run import CONFIG_KEYS, Run
from tests.test_datasets import fashion, frey, mnist, omniglot  # noqa: F401  (fixtures)


@pytest.fixture
def cache(tmp_path, monkeypatch):
  path = tmp_path / "cache"
  monkeypatch.setenv("JVAE_DATA_DIR", str(path))
  return path


def _train(out, *extra):
  return jvae_main(["train", "--model", "mlp", "--hidden", "8", "--latent-dim", "2",
                    "--epochs", "2", "--batch-size", "4", "--eval-samples", "2",
                    "--no-progress", "--out", str(out), *extra])


def _cfg(**over):
  return build.complete_config({"model": "mlp", "hidden": [8], "latent_dim": 2, "seed": 0,
                                "seeds": 1, "batch_size": 4, "epochs": 1, **over}, CONFIG_KEYS)


def test_train_on_dynamically_binarized_mnist(tmp_path, cache, mnist):  # noqa: F811
  assert _train(tmp_path / "run", "--data", "mnist-dynamic") == 0
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert np.isfinite(summary["test"]["mean"])
  assert (cache / "mnist").is_dir()  # downloaded once into the cache
  run = Run(_cfg(data="mnist-dynamic"))
  assert run.data.binarize == "dynamic"
  assert len(np.unique(run.data.train)) > 2  # grey levels, drawn at each batch
  assert set(np.unique(run.data.test)) <= {0.0, 1.0}  # one fixed draw
  # The training objective binarizes: on grey x its value is that of a binary draw, so it differs
  # from the plain bound at the same key, and it equals the plain bound on binary x.
  params = run.model.init(jax.random.key(0), jnp.asarray(run.data.test[:2]))
  plain = build.build_bound(run.model, run.cfg, for_training=True)
  x = jnp.asarray(run.data.train[:4])
  assert not np.allclose(run.objective(params, jax.random.key(1), x),
                         plain(params, jax.random.key(1), x))


def test_valid_size_and_m2_labels_on_mnist(tmp_path, cache, mnist):  # noqa: F811
  run = Run(_cfg(data="mnist-dynamic", valid_size=2))
  assert (len(run.data.train), len(run.data.valid)) == (13, 2)
  ds = build.load_dataset(_cfg(data="mnist-dynamic"))
  splits = labelled_semi_supervised(ds, num_labels=5, balanced=False)
  assert int(np.sum(splits.train.mask)) == 5 and splits.num_classes == int(max(
      y.max() for y in ds.labels)) + 1
  np.testing.assert_array_equal(splits.test.y, ds.labels[2])
  # --model m2 reads those labels; 10 balanced labels need every class, which 13 images lack.
  with pytest.raises(UsageError, match="--labels 10: .*class"):
    Run(_cfg(data="mnist-dynamic", model="m2", labels=10))


def test_train_on_omniglot_and_fashion(tmp_path, cache, omniglot, fashion,  # noqa: F811
                                       monkeypatch):
  monkeypatch.setattr(datasets, "MNIST_VALID_SIZE", 3)  # of Fashion-MNIST's 15 images
  assert _train(tmp_path / "omni", "--data", "omniglot") == 0
  assert Run(_cfg(data="fashion_mnist")).data.binarize == "dynamic"


def test_frey_defaults_to_a_gaussian_likelihood(tmp_path, cache, frey):  # noqa: F811
  run = Run(_cfg(data="frey", batch_size=2))
  assert run.data.binarize is None and run.data.image_shape == (28, 20)
  params = run.model.init(jax.random.key(0), jnp.asarray(run.data.train[:2]))
  assert set(params["params"]["decoder"]["head"]) == {"loc", "scale"}  # N(μ, σ²), σ learned
  bern = Run(_cfg(data="frey", batch_size=2, likelihood="bernoulli"))
  params = bern.model.init(jax.random.key(0), jnp.asarray(run.data.train[:2]))
  assert set(params["params"]["decoder"]["head"]) == {"logits"}
  assert _train(tmp_path / "frey", "--data", "frey", "--batch-size", "2") == 0


@pytest.mark.parametrize("argv, says", [
    (["--data", "frey", "--model", "cvae"], "--model cvae runs on --data digits"),
    (["--data", "digits", "--model", "m2", "--labels", "10", "--likelihood", "gaussian"],
     "--likelihood applies to"),
    (["--data", "digits", "--valid-size", "10"], "--valid-size applies to"),
    (["--data", "frey", "--model", "m2", "--labels", "10"], "needs binary data"),
])
def test_dataset_usage_errors(tmp_path, capsys, argv, says):
  with pytest.raises(SystemExit) as exit_info:
    jvae_main(["train", *argv, "--out", str(tmp_path / "run")])
  assert exit_info.value.code == 2
  assert says in capsys.readouterr().err
  assert not (tmp_path / "run").exists()
