"""docs/ARCHITECTURE.md: the "write your own model" example runs as written, and the layers hold."""

import ast
import math
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
LAYERS = ["bounds", "distributions", "models", "objectives", "training", "inference", "io", "cli"]


def test_write_your_own_model_example_runs(capsys):
  text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
  (code,) = re.findall(r"## Write your own model\n\n.*?```python\n(.*?)```", text, re.S)
  assert "import flax" not in code and "jvae.VAE" not in code
  exec(compile(code, "ARCHITECTURE.md", "exec"), {})
  values = [float(v) for v in re.findall(r"-?\d+\.\d+", capsys.readouterr().out)]
  assert len(values) == 2 and all(math.isfinite(v) and v < 0 for v in values), values


def _imported_subpackages(path: pathlib.Path) -> set[str]:
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    names = []
    if isinstance(node, ast.ImportFrom) and node.module:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    elif isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    for name in names:
      parts = name.split(".")
      if parts[0] == "jvae" and len(parts) > 1 and parts[1] in LAYERS:
        found.add(parts[1])
  return found


def test_each_layer_imports_only_the_layers_above_it():
  """The package tree shows the layers: a module never imports from a later layer."""
  rank = {name: i for i, name in enumerate(LAYERS)}
  rank["inference"] = rank["training"]  # both layer 5
  rank["cli"] = rank["io"]  # both layer 6
  bad = []
  for layer in LAYERS:
    for path in (ROOT / "jvae" / layer).glob("*.py"):
      for other in _imported_subpackages(path):
        if rank[other] > rank[layer]:
          bad.append(f"{path.relative_to(ROOT)} imports jvae.{other}")
  assert not bad, bad
