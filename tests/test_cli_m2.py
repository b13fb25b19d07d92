"""``jvae train --model m2``: semi-supervised digits, its usage errors, summary, eval and sample."""

import json

import numpy as np
import pytest

from jvae.cli import main as _cli_main
from jvae.io import images as _images
from jvae.objectives import semi_supervised as ss

M2 = ["--model", "m2", "--data", "digits"]
TINY = ["--hidden", "8", "--latent-dim", "2", "--no-progress"]


def _strict_json(text):
  def refuse(name):
    raise ValueError(f"not JSON: {name}")
  return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("args, message", [
    (["--model", "m2"], "--model m2 needs --labels N"),
    (["--labels", "100"], "--labels applies to --model m2 only, not mlp"),
    (["--model", "cvae", "--labels", "100"], "--labels applies to --model m2 only, not cvae"),
    (["--classifier-weight", "2"], "--classifier-weight applies to --model m2 only"),
    ([*M2, "--labels", "0"], "--labels: must be an integer >= 1, got 0"),
    (["--model", "m2", "--data", "binarized_mnist", "--labels", "100"],
     "--model m2 needs class labels, which --data binarized_mnist does not have"),
    ([*M2, "--labels", "100", "--bound", "iwae"], "not --bound iwae"),
    ([*M2, "--labels", "100", "--alpha", "0.3"],
     "the weight of m2's classification term is --classifier-weight"),
    ([*M2, "--labels", "100", "--estimator", "dreg"], "takes --estimator reparam or stl"),
    ([*M2, "--labels", "100", "--free-bits", "1"], "--free-bits does not apply to --model m2"),
    ([*M2, "--labels", "100", "--prior", "learned"], "--model m2 has p(z) = N(0, I)"),
    ([*M2, "--labels", "100", "--posterior", "iaf"], "--model m2 has a Gaussian posterior only"),
    ([*M2, "--labels", "100", "--classifier-weight", "-1"], "--classifier-weight: must be"),
    # Checked when the data is built, still before anything is written:
    ([*M2, "--labels", "1198"], "--labels 1198: num_labels must be in [1, 1197]"),
    ([*M2, "--labels", "1190"], "fewer than the 119 of 1190 labels it must give"),
])
def test_impossible_m2_options_are_usage_errors(args, message, tmp_path, capsys):
  with pytest.raises(SystemExit) as exc:
    _cli_main(["train", *args, "--out", str(tmp_path / "run")])
  assert exc.value.code == 2
  err = capsys.readouterr().err
  assert "usage: jvae" in err and message in err, err
  assert "Traceback" not in err
  assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def m2_run(tmp_path_factory):
  run = tmp_path_factory.mktemp("runs") / "m2"
  assert _cli_main(["train", *M2, "--labels", "50", *TINY, "--epochs", "1", "--seeds", "2",
                    "--out", str(run)]) == 0
  return run


def test_m2_summary_has_test_error_and_bound_per_seed_and_over_seeds(m2_run, capsys):
  cfg = _strict_json((m2_run / "config.json").read_text())
  assert (cfg["model"], cfg["labels"], cfg["classifier_weight"]) == ("m2", 50, None)
  s = _strict_json((m2_run / "summary.json").read_text())
  assert s["test_bound_name"] == "elbo" and s["num_labels"] == 50
  assert s["classifier_weight"] == pytest.approx(ss.kingma_alpha(num_examples=1197,
                                                                 num_labels=50))
  for name, summary in (("elbo", s["test"]),
                        ("classification_error", s["test_classification_error"])):
    values = s["per_seed"][name]
    assert len(values) == 2 and summary == s["summary"][name]
    assert summary["n"] == 2 and summary["confidence"] == 0.95
    assert summary["ci_low"] <= summary["mean"] == pytest.approx(np.mean(values))
    assert summary["mean"] <= summary["ci_high"]
  assert all(0 <= e <= 1 for e in s["per_seed"]["classification_error"])
  assert all(-64 * np.log(2) - 5 < v < 0 for v in s["per_seed"]["elbo"])
  assert s["epochs_run"] == 1 and s["nonfinite_steps"] == [0, 0]
  # samples.png: ceil(64 / 10) = 7 draws of p(x|y, z) per class, a row per class.
  assert _images.read_png(m2_run / "samples.png").shape == ((10 * 9 + 1) * 7, (7 * 9 + 1) * 7)
  assert (m2_run / "reconstructions.png").is_file()


def test_eval_and_sample_an_m2_run(m2_run, tmp_path, capsys):
  capsys.readouterr()
  assert _cli_main(["eval", str(m2_run), "-k", "5", "--limit", "20", "--no-progress"]) == 0
  out = _strict_json(capsys.readouterr().out.strip().splitlines()[-1])
  assert [r["seed_index"] for r in out["per_seed"]] == [0, 1]
  for row in out["per_seed"]:
    assert row["examples"] == 20 and -64 * np.log(2) - 5 < row["log_likelihood"] < 0
    assert 0 <= row["classification_error"] <= 1
  assert out["classification_error_summary"]["n"] == 2
  png = tmp_path / "m2-sample.png"
  assert _cli_main(["sample", str(m2_run), "-n", "20", "--out", str(png)]) == 0
  assert _images.read_png(png).shape == ((10 * 9 + 1) * 7, (2 * 9 + 1) * 7)
