"""The README's example runs as written (with fewer training steps)."""

import math
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_readme_example_runs(capsys):
  text = (ROOT / "README.md").read_text()
  (code,) = re.findall(r"## Example\n\n```python\n(.*?)```", text, re.S)
  assert "split(jax.random.key(2), 300)" in code
  exec(compile(code.replace(", 300)", ", 20)"), "README.md", "exec"), {})
  out = capsys.readouterr().out
  value = float(out.split("IWAE_50:")[1])
  assert math.isfinite(value) and value < 0


def test_readme_gives_the_two_commands():
  text = (ROOT / "README.md").read_text()
  assert 'pip install -e . && jvae train' in text
  assert 'pip install -e ".[test]" && python -m pytest -q' in text
  ci = (ROOT / ".ci" / "run").read_text()
  assert 'pip install -e ".[test]" && python -m pytest -q' in ci


def test_readme_discrete_example_runs(capsys):
  text = (ROOT / "README.md").read_text()
  (code,) = re.findall(r"## Discrete latents\n.*?```python\n(.*?)```", text, re.S)
  assert "(96, 784)" in code
  exec(compile(code.replace("(96, 784)", "(48, 784)"), "README.md", "exec"), {})
  value = float(capsys.readouterr().out.split("VIMCO IWAE_5:")[1])
  assert math.isfinite(value) and value < 0
