"""The suite runner (``python -m benchmarks``): its time limits and budget, and what a run on a
lent accelerator relies on (the commit from the environment, PyTorch's device beside JAX's)."""

import os
import re
import subprocess
import sys
import time
import types

import jax
import pytest

from benchmarks import __main__ as suite
from benchmarks import _harness as h


def test_a_script_past_its_limit_is_stopped_with_what_it_started(tmp_path):
  pid_file = tmp_path / "child.pid"
  code = ("import subprocess, sys, time; "
          "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
          f"open({str(pid_file)!r}, 'w').write(str(c.pid)); time.sleep(60)")
  start = time.monotonic()
  assert suite._run([sys.executable, "-c", code], 3.0) is None
  assert time.monotonic() - start < 30
  child = int(pid_file.read_text())
  for _ in range(50):  # the grandchild was killed with its process group
    try:
      os.kill(child, 0)
    except ProcessLookupError:
      break
    time.sleep(0.1)
  else:
    pytest.fail(f"the script's own child {child} outlived the limit")
  assert suite._run([sys.executable, "-c", "raise SystemExit(3)"], 30.0) == 3


@pytest.fixture
def fake_suite(monkeypatch, tmp_path):
  calls = []

  def run(cmd, limit):
    calls.append((cmd[2], limit))
    return 1 if cmd[2] == "benchmarks.bad" else 0

  monkeypatch.setattr(suite, "_run", run)
  monkeypatch.setattr(suite, "RESULTS", tmp_path)
  monkeypatch.setitem(suite.SUITES, "t", {"a": ["--quick"], "bad": [], "c": []})
  monkeypatch.setitem(suite.CAPS, "t", {"a": 50.0, "c": 5000.0})
  return calls


def test_caps_and_budget_limit_each_script(fake_suite):
  assert suite.run_suite("t", "h100", None) == ["bad"]
  assert fake_suite == [("benchmarks.a", 50.0), ("benchmarks.bad", None),
                        ("benchmarks.c", 5000.0)]
  fake_suite.clear()
  assert suite.run_suite("t", None, ["a", "c"], budget=100.0) == []
  (a, cap_a), (c, left) = fake_suite
  assert (a, cap_a, c) == ("benchmarks.a", 50.0, "benchmarks.c")
  assert 90.0 < left <= 100.0  # the budget left, below c's own cap


def test_no_script_starts_without_enough_budget(fake_suite):
  assert suite.run_suite("t", None, None, budget=suite.MIN_START_S / 2) == ["a", "bad", "c"]
  assert fake_suite == []


def test_command_line_refuses_unknown_names_and_bad_budgets(capsys):
  with pytest.raises(SystemExit):
    suite.main(["--suite", "device", "--only", "nll"])
  assert "not in the device suite" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    suite.main(["--suite", "device", "--budget", "0", "--render-only"])
  assert "--budget must be > 0" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    suite.main(["--render-only", "--no-render"])
  assert "exclude each other" in capsys.readouterr().err


def test_no_render_leaves_the_report_alone(fake_suite, monkeypatch, tmp_path):
  rendered = []
  monkeypatch.setattr(suite._report, "render", lambda *a: rendered.append(a) or a[1])
  assert suite.main(["--suite", "t", "--only", "a", "--no-render"]) == 0
  assert fake_suite == [("benchmarks.a", 50.0)] and rendered == []
  assert suite.main(["--suite", "t", "--only", "bad"]) == 1
  assert len(rendered) == 1


DEVICE_TIMEOUT_S = 540  # the device tool's timeout_s that device.sh's header gives


def test_the_device_suite_runs_known_scripts_each_with_a_cap():
  device = suite.SUITES["device"]
  assert list(device)[:2] == ["evaluation", "seeds"]  # the accelerator goals first
  assert set(suite.CAPS["device"]) == set(device)
  for name in device:
    assert (suite.ROOT / "benchmarks" / f"{name}.py").is_file()
  script = (suite.ROOT / "benchmarks" / "device.sh").read_text()
  assert f"timeout_s {DEVICE_TIMEOUT_S}" in script
  budget = int(re.search(r'budget="\$\{1:-(\d+)\}"', script).group(1))
  tests_s = int(re.search(r'tests_s="\$\{TESTS_S:-(\d+)\}"', script).group(1))
  # the suite's budget, the tests' and a minute to install and start: inside the command's limit
  assert budget + tests_s + 60 <= DEVICE_TIMEOUT_S
  assert max(suite.CAPS["device"].values()) < budget  # the first script cannot eat it all


def test_the_commit_comes_from_the_environment_without_git(monkeypatch):
  monkeypatch.setenv("JVAE_GIT_COMMIT", "abc123+dirty")
  assert h._git_commit() == "abc123+dirty"
  monkeypatch.delenv("JVAE_GIT_COMMIT")
  head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=suite.ROOT, capture_output=True,
                        text=True)
  if head.returncode == 0:  # a checkout: HEAD itself
    assert h._git_commit().startswith(head.stdout.strip())


@pytest.mark.parametrize(("backend", "cuda", "expected"),
                         [("cpu", False, "cpu"), ("cpu", True, "cpu"), ("gpu", True, "cuda"),
                          ("gpu", False, None), ("tpu", True, None)])
def test_torch_runs_beside_jax_on_the_same_kind_of_device(monkeypatch, backend, cuda, expected):
  fake = types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: cuda))
  monkeypatch.setitem(sys.modules, "torch", fake)
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  assert h.torch_device() == expected


def test_no_torch_means_no_torch_device(monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
  assert h.torch_device() is None


def test_device_script_refuses_to_run_unprepared(tmp_path):
  script = suite.ROOT / "benchmarks" / "device.sh"
  out = subprocess.run(["bash", str(script), "nonsense"], capture_output=True, text=True)
  assert out.returncode == 2 and "usage" in out.stderr
  env = {**os.environ, "JVAE_DEVICE_DIR": str(tmp_path / "none")}
  out = subprocess.run(["bash", str(script), "run"], capture_output=True, text=True, env=env)
  assert out.returncode == 2 and "device.sh prepare" in out.stderr


def test_conversion_checks_run_at_full_precision_and_restore_it(monkeypatch):
  calls = []
  fake = types.SimpleNamespace(
      get_float32_matmul_precision=lambda: calls[-1] if calls else "high",
      set_float32_matmul_precision=calls.append)
  monkeypatch.setitem(sys.modules, "torch", fake)
  before = jax.config.jax_default_matmul_precision
  with h.highest_matmuls():
    assert jax.config.jax_default_matmul_precision == "highest"
    assert calls == ["highest"]
  assert jax.config.jax_default_matmul_precision == before
  assert calls == ["highest", "high"]  # PyTorch's own setting is back
  with pytest.raises(RuntimeError), h.highest_matmuls():
    raise RuntimeError
  assert calls[-1] == "high" and jax.config.jax_default_matmul_precision == before
