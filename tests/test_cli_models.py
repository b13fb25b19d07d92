"""The jvae command on every model family: cvae, learned priors, hierarchical and ladder VAEs."""

import json

import jax
import numpy as np
import pytest

import jvae
from jvae.cli import args as cli_args
from jvae.cli import build
from jvae.cli import main as _cli_main
from jvae.cli import rundir
from jvae.io import conditional_data as cdata
from jvae.io import data as jdata
from jvae.io import images as _images

FAST = ["--epochs", "1", "--batch-size", "100", "--eval-samples", "5", "--no-progress"]
TINY_LAYERS = ["--hidden", "16", "8", "--latent-dims", "4", "2"]


def _strict_json(text):
  def refuse(name):
    raise ValueError(f"not JSON: {name}")
  return json.loads(text, parse_constant=refuse)


def _last_json(capsys):
  return _strict_json(capsys.readouterr().out.strip().splitlines()[-1])


def _grid_shape(rows, cols, side=8, scale=7):
  """The shape of a written ``tile`` grid of rows × cols images of side × side pixels."""
  return ((rows * (side + 1) + 1) * scale, (cols * (side + 1) + 1) * scale)


def _eval_and_sample(run, tmp_path, capsys, n=16):
  """``jvae eval`` and ``jvae sample`` on ``run``; returns the sample picture."""
  capsys.readouterr()
  assert _cli_main(["eval", str(run), "-k", "5", "--limit", "20", "--no-progress"]) == 0
  (row,) = _last_json(capsys)["per_seed"]
  assert row["examples"] == 20 and np.isfinite(row["log_likelihood"])
  assert row["log_likelihood"] < 0
  png = tmp_path / f"{run.name}-sample.png"
  assert _cli_main(["sample", str(run), "-n", str(n), "--out", str(png)]) == 0
  assert _last_json(capsys)["out"] == str(png)
  return _images.read_png(png)


# -- usage errors, before anything is written -----------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--model", "cvae", "--prior", "vamp"],
     "--prior applies to --model mlp, kingma2014 and burda2015 only"),
    (["--kl", "analytic", "--prior", "vamp"], "--kl analytic has no closed form for --prior vamp"),
    (["--kl", "analytic", "--prior", "mixture"], "no closed form for --prior mixture"),
    (["--model", "cvae", "--data", "digits", "--observed-quadrants", "1"],
     "--observed-quadrants applies to --model cvae on MNIST"),
    (["--observed-quadrants", "1"], "--observed-quadrants applies to --model cvae on MNIST"),
    (["--model", "cvae", "--data", "binarized_mnist", "--observed-quadrants", "0", "0"],
     "1 to 3 distinct quadrants"),
    (["--model", "cvae", "--data", "binarized_mnist", "--observed-quadrants", "0", "1", "2", "3"],
     "1 to 3 distinct quadrants"),
    (["--model", "cvae", "--data", "mnist", "--observed-quadrants", "4"], "invalid choice: 4"),
    (["--model", "cvae", "--posterior", "iaf"], "--model cvae has a Gaussian posterior only"),
    (["--model", "lvae", "--posterior", "fullcov"], "--model lvae has a Gaussian posterior only"),
    (["--model", "lvae", "--kl", "analytic"], "no closed form for --model lvae"),
    (["--model", "burda2015_2layer", "--kl", "analytic"],
     "no closed form for --model burda2015_2layer"),
    (["--model", "lvae", "--prior", "vamp"], "--model lvae has p(z_L) = N(0, I)"),
    (["--model", "burda2015_2layer", "--latent-dim", "4"], "takes --latent-dims D1 D2"),
    (["--model", "kingma2014", "--latent-dims", "4", "2"], "--latent-dims applies to --model"),
    (["--model", "lvae", "--hidden", "16", "--latent-dims", "4", "2"],
     "needs a --hidden width per stochastic layer: 2 latent sizes (4 2) but 1 widths (16)"),
    (["--model", "lvae", "--latent-dims", "4", "2", "1"], "3 latent sizes (4 2 1) but 2 widths"),
    (["--model", "burda2015_2layer", "--free-bits", "1", "--free-bits-groups", "3"],
     "does not divide the number of stochastic layers 2"),
    (["--prior", "vamp", "--free-bits", "0.5"], "which --prior vamp (a mixture) does not have"),
    (["--model", "cvae", "--free-bits", "0.5", "--free-bits-groups", "3"],
     "does not divide the latent size 20"),
    (["--vamp-components", "5"], "--vamp-components applies to --prior vamp only, not standard"),
    (["--prior", "vamp", "--prior-components", "3"],
     "--prior-components applies to --prior mixture only, not vamp"),
    (["--prior", "vamp", "--vamp-components", "0"], "--vamp-components: must be an integer >= 1"),
    (["--model", "burda2015", "--hidden", "8"], "--hidden applies to --model mlp only"),
])
def test_impossible_model_options_are_usage_errors(args, message, tmp_path, capsys):
  with pytest.raises(SystemExit) as exc:
    _cli_main(["train", *args, "--out", str(tmp_path / "run")])
  assert exc.value.code == 2
  err = capsys.readouterr().err
  assert "usage: jvae" in err and message in err, err
  assert "Traceback" not in err
  assert list(tmp_path.iterdir()) == []


def _combinations():
  for model in cli_args.MODELS:
    priors = cli_args.PRIORS if model == "mlp" else ["standard"]
    for prior in priors:
      for kl in (None, "analytic", "sample"):
        for free_bits in (None, "0.5"):
          argv = ["train", "--model", model] + (["--prior", prior] if model == "mlp" else [])
          argv += ["--hidden", "4"] if model in ("mlp", "cvae") else []
          argv += ["--hidden", "4", "4", "--latent-dims", "2", "2"] if model in (
              cli_args.LAYERED_MODELS) else []
          argv += ["--kl", kl] if kl else []
          argv += ["--free-bits", free_bits] if free_bits else []
          argv += ["--vamp-components", "3"] if prior == "vamp" else []
          yield argv


def test_parse_time_checks_agree_with_the_models():
  """A model/prior/KL/free-bits combination passes the parse-time check iff it traces."""
  from jvae.cli import run as r

  parser = cli_args.build_parser()
  data = {False: build.load_data({"model": "mlp", "data": "digits"}),
          True: build.load_data({"model": "cvae", "data": "digits"})}
  accepted = 0
  for argv in _combinations():
    args = parser.parse_args(argv)
    problems = cli_args._option_problems(vars(args), cli_args.explicit_train_options(argv[1:]))
    cfg = r._config_from_args(args)
    d = data[cfg["model"] == "cvae"]
    model = build.build_model(cfg, d)
    batch = jax.tree_util.tree_map(lambda a: a[:3], d.train)
    try:
      bound = build.build_bound(model, cfg, for_training=True)
      params = jax.eval_shape(model.init, jax.random.key(0), batch)
      jax.eval_shape(bound, params, jax.random.key(1), batch)
      built = True
    except ValueError:
      built = False
    assert built == (not problems), (argv, problems)
    accepted += built
  assert accepted >= 20  # the check is not vacuous


def test_default_kl_is_analytic_only_where_it_exists():
  parser = cli_args.build_parser()

  def kl(*argv):
    return cli_args.resolve_kl(vars(parser.parse_args(["train", *argv])))

  assert kl() == kl("--prior", "learned") == kl("--model", "cvae") == "analytic"
  for argv in (["--prior", "vamp"], ["--prior", "mixture"], ["--model", "lvae"],
               ["--model", "burda2015_2layer"], ["--posterior", "iaf"]):
    assert kl(*argv) == "sample", argv
  assert kl("--prior", "learned", "--kl", "sample") == "sample"


# -- cvae: class-conditional digits ---------------------------------------------------------------

@pytest.fixture(scope="module")
def cvae_run(tmp_path_factory):
  run = tmp_path_factory.mktemp("runs") / "cvae"
  assert _cli_main(["train", "--model", "cvae", "--data", "digits", "--hidden", "16",
                    "--latent-dim", "2", *FAST, "--out", str(run)]) == 0
  return run


def test_cvae_on_digits_draws_one_row_per_class(cvae_run, tmp_path, capsys):
  cfg = _strict_json((cvae_run / "config.json").read_text())
  assert (cfg["model"], cfg["hidden"], cfg["latent_dim"]) == ("cvae", [16], 2)
  summary = _strict_json((cvae_run / "summary.json").read_text())
  assert np.isfinite(summary["test"]["mean"]) and summary["test_bound_name"] == "iwae_5"
  # samples.png: 64 draws = ceil(64 / 10) = 7 per class, one row per class.
  assert _images.read_png(cvae_run / "samples.png").shape == _grid_shape(10, 7)
  grid = _eval_and_sample(cvae_run, tmp_path, capsys, n=20)
  assert grid.shape == _grid_shape(10, 2)
  # reconstructions.png: the labelled "data" / "recon" rows of test images.
  png = _images.read_png(cvae_run / "reconstructions.png")[::7, ::7]
  margin = max(_images.text_bitmap(w).shape[1] for w in ("data", "recon")) + 2
  assert png.shape == (2 * 9 + 1, margin + 16 * 9 + 1)
  test = jdata.load("digits").test
  for c, i in enumerate(_images.spread_indices(len(test), 16)):
    cell = png[1:9, margin + 1 + 9 * c:margin + 9 + 9 * c]
    np.testing.assert_array_equal(cell, np.round(test[i].reshape(8, 8) * 255))


# -- cvae: quadrant completion --------------------------------------------------------------------

def _fake_mnist():
  """A small stand-in for binarized MNIST: random 28 × 28 binary images, 200/100/100."""
  rng = np.random.default_rng(0)
  train, valid, test = ((rng.random((n, 784)) < 0.3).astype(np.float32) for n in (200, 100, 100))
  return jdata.Dataset("binarized_mnist", train, valid, test, (784,), (28, 28))


def test_cvae_completes_mnist_quadrants(tmp_path, monkeypatch):
  fake = _fake_mnist()
  monkeypatch.setattr(jdata, "load", lambda name, **kwargs: fake)
  run = tmp_path / "quadrants"
  assert _cli_main(["train", "--model", "cvae", "--data", "binarized_mnist",
                    "--observed-quadrants", "0", "3", "--hidden", "8", "--latent-dim", "2",
                    *FAST, "--out", str(run)]) == 0
  cfg = _strict_json((run / "config.json").read_text())
  assert cfg["observed_quadrants"] == [0, 3]
  mask = cdata.quadrant_mask((28, 28), (0, 3))
  # reconstructions.png: whole images, the true one above the completion of its quadrants 1, 2.
  png = _images.read_png(run / "reconstructions.png")[::2, ::2]
  margin = max(_images.text_bitmap(w).shape[1] for w in ("data", "recon")) + 2
  assert png.shape == (2 * 29 + 1, margin + 16 * 29 + 1)
  for c, i in enumerate(_images.spread_indices(100, 16)):
    left = margin + 1 + 29 * c
    truth, completed = png[1:29, left:left + 28], png[30:58, left:left + 28]
    np.testing.assert_array_equal(truth, np.round(fake.test[i].reshape(28, 28) * 255))
    np.testing.assert_array_equal(completed[mask], truth[mask])  # c as given
  # samples.png (as jvae sample draws it): completions of 64 test images' quadrants 0 and 3
  # from p(z|c), the first of test image 0.
  grid = _images.read_png(run / "samples.png")
  assert grid.shape == _grid_shape(8, 8, side=28, scale=2)
  first = grid[2:58:2, 2:58:2]
  np.testing.assert_array_equal(first[mask], np.round(fake.test[0].reshape(28, 28) * 255)[mask])


# -- learned priors -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vamp_run(tmp_path_factory):
  run = tmp_path_factory.mktemp("runs") / "vamp"
  assert _cli_main(["train", "--prior", "vamp", "--vamp-components", "5", "--hidden", "16",
                    "--latent-dim", "2", *FAST, "--out", str(run)]) == 0
  return run


def test_vamp_prior_trains_evaluates_and_samples(vamp_run, tmp_path, capsys):
  from jvae.cli import run as r

  cfg = _strict_json((vamp_run / "config.json").read_text())
  assert (cfg["prior"], cfg["vamp_components"], cfg["kl"]) == ("vamp", 5, None)
  params = r.Run(cfg).init_state.train.params["params"]
  assert params["prior"]["pseudo_inputs"].shape == (1, 5, 64)  # (seeds, C, *event)
  assert np.isfinite(_strict_json((vamp_run / "summary.json").read_text())["test"]["mean"])
  assert _images.read_png(vamp_run / "samples.png").shape == _grid_shape(8, 8)
  assert _eval_and_sample(vamp_run, tmp_path, capsys).shape == _grid_shape(2, 8)


def test_resume_refuses_to_change_the_prior(vamp_run, capsys):
  before = (vamp_run / "config.json").read_text()
  capsys.readouterr()
  with pytest.raises(SystemExit) as exc:
    _cli_main(["train", "--resume", str(vamp_run), "--vamp-components", "6", "--prior", "vamp",
               "--model", "mlp", "--observed-quadrants", "1", "--epochs", "3"])
  assert exc.value.code == 2
  err = capsys.readouterr().err
  assert "--vamp-components: saved 5, given 6" in err
  assert "--observed-quadrants: saved 0, given 1" in err
  assert "--prior:" not in err and "--model:" not in err  # equal to the saved run's
  assert (vamp_run / "config.json").read_text() == before


def test_a_run_saved_before_the_new_options_reads_as_their_defaults(tmp_path):
  from jvae.cli import run as r

  old = {k: v for k, v in r._config_from_args(cli_args.build_parser().parse_args(["train"]))
         .items() if k not in ("latent_dims", "prior", "vamp_components", "prior_components",
                               "observed_quadrants")}
  cfg = build.complete_config(old, r.CONFIG_KEYS)
  assert (cfg["prior"], cfg["latent_dims"], cfg["observed_quadrants"]) == ("standard", None, [0])
  assert (cfg["vamp_components"], cfg["prior_components"]) == (50, 10)
  args = cli_args.build_parser().parse_args(["train", "--resume", str(tmp_path), "--prior",
                                             "standard", "--observed-quadrants", "0"])
  assert rundir.resumed_config(cfg, args, {"resume", "prior", "observed_quadrants"},
                               r.CONFIG_KEYS) == cfg
  assert isinstance(build.build_model(cfg, (64,)), jvae.VAE)


# -- several stochastic layers --------------------------------------------------------------------

@pytest.mark.parametrize("model, extra", [
    ("lvae", ["--free-bits", "0.1"]),  # free bits per layer, with the sampled KL
    ("burda2015_2layer", ["--bound", "iwae", "-k", "2"]),
])
def test_layered_models_train_evaluate_and_sample(model, extra, tmp_path, capsys):
  """Both write their pictures; ``jvae eval`` and ``jvae sample`` are run on one.

  ``jvae eval`` is ``log_marginal`` of the contract, the IWAE of summary.json on the other model,
  and ``jvae sample`` draws as samples.png is drawn (``run.sample_grid``).
  """
  run = tmp_path / model
  assert _cli_main(["train", "--model", model, *TINY_LAYERS, *extra, *FAST,
                    "--out", str(run)]) == 0
  cfg = _strict_json((run / "config.json").read_text())
  assert (cfg["model"], cfg["hidden"], cfg["latent_dims"]) == (model, [16, 8], [4, 2])
  summary = _strict_json((run / "summary.json").read_text())
  assert all(np.isfinite(v[0]) for v in summary["per_seed"].values())
  assert summary["per_seed"]["iwae_5"][0] >= summary["per_seed"]["elbo"][0] - 0.5
  (layer_kls,) = summary["test_kl_groups"]  # one seed, one KL per stochastic layer
  # The layers' terms of KL(q(z|x) ‖ p(z)) (one may be negative; their sum, the KL, is not).
  assert len(layer_kls) == 2 and sum(layer_kls) > 0, layer_kls
  assert _images.read_png(run / "samples.png").shape == _grid_shape(8, 8)
  assert _images.read_png(run / "reconstructions.png").shape[0] == (2 * 9 + 1) * 7
  if model == "lvae":
    assert _eval_and_sample(run, tmp_path, capsys).shape == _grid_shape(2, 8)
