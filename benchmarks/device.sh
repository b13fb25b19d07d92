#!/usr/bin/env bash
# Issue 15's accelerator checks on a lent GPU machine, as one short prepared command.
#
# The machine's image has JAX, Flax, optax, chex, NumPyro and PyTorch but not distrax (with
# tfp-nightly, dm-tree, gast, decorator) or blackjax, and it reaches no network; the data set and
# the commit do not travel with the working tree either. So:
#
# Here, in the repository root, with the network (and this checkout's .venv, whose versions the
# wheels take):
#     bash benchmarks/device.sh prepare
#   writes .device/ (git-ignored, ~12 MB): whl/ the wheels for CPython 3.12 on x86-64 Linux,
#   data/binarized_mnist.npz from $JVAE_DATA_DIR (default ../shared/data), and COMMIT.
#   (WHEEL_PYTHON=3.11 fetches wheels for another CPython, e.g. to rehearse `run` here on a CPU.)
#
# There, through the device tool's run with carry [".device"] and timeout_s 540:
#     bash benchmarks/device.sh run [BUDGET_S]
#   installs the wheels into /tmp/site, prints the GPU and the versions, runs
#   `python -m benchmarks --suite device --tag <h100|h200|gpu> --budget BUDGET_S` (default 360;
#   each script also has its own cap, benchmarks/__main__.py's CAPS), then a GPU subset of the
#   tests (float32 matmuls at "highest") for at most TESTS_S seconds (default 90; 0 skips
#   them), and leaves in $OUT
#   (default .device/out): suite.log, results.tgz (the tagged records and plots) and tests.log.
#
# Back here:
#     tar xzf <files_at>/results.tgz -C benchmarks/results && python -m benchmarks --render-only
#
# PYTHON (default python3) picks the interpreter; ONLY="evaluation seeds" runs only those;
# DEVICE_ALLOW_CPU=1 lets `run` go on where JAX sees no accelerator (a rehearsal on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
dir="${JVAE_DEVICE_DIR:-$root/.device}"  # another folder only for tests
packages=(distrax tfp-nightly blackjax dm-tree gast decorator)
python="${PYTHON:-python3}"

prepare() {
  local venv_python="$root/.venv/bin/python"
  [[ -x "$venv_python" ]] || { echo "error: no $venv_python: create the venv first (README)" >&2; exit 2; }
  local data_dir="${JVAE_DATA_DIR:-$root/../shared/data}"
  [[ -f "$data_dir/binarized_mnist.npz" ]] || {
    echo "error: no binarized_mnist.npz in $data_dir (set JVAE_DATA_DIR)" >&2; exit 2; }
  rm -rf "$dir/whl" "$dir/data"
  mkdir -p "$dir/whl" "$dir/data"
  local pins=()
  for name in "${packages[@]}"; do
    pins+=("$name==$("$venv_python" -c "import importlib.metadata as m; print(m.version('$name'))")")
  done
  echo "wheels: ${pins[*]}"
  "$venv_python" -m pip download -q --no-deps --only-binary=:all: --python-version "${WHEEL_PYTHON:-3.12}" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$dir/whl" "${pins[@]}"
  cp "$data_dir/binarized_mnist.npz" "$dir/data/"
  local commit
  commit="$(env -u JVAE_GIT_COMMIT "$venv_python" -c \
    "from benchmarks._harness import _git_commit; print(_git_commit())")"
  echo "$commit" >"$dir/COMMIT"
  # What the tree holds now, so that `run` can tell when the tree it got is another one.
  git ls-files -z -- . ':(exclude)benchmarks/results' ':(exclude)BENCHMARKS.md' \
    | xargs -0 sha256sum >"$dir/MANIFEST"
  echo "prepared $dir for commit $commit ($(du -sh "$dir" | cut -f1)); run it before changing" \
    "the tree (a changed tree is recorded as such)"
}

run() {
  local budget="${1:-360}" tests_s="${TESTS_S:-90}"
  [[ -d "$dir/whl" && -f "$dir/COMMIT" ]] || {
    echo "error: no $dir/whl or $dir/COMMIT: run 'bash benchmarks/device.sh prepare' here first" \
      "and carry .device" >&2; exit 2; }
  local out="${OUT:-$dir/out}"
  mkdir -p "$out"
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$dir"/whl/*.whl
  export PYTHONPATH="/tmp/site:$root${PYTHONPATH:+:$PYTHONPATH}"
  local commit
  commit="$(cat "$dir/COMMIT")"
  if [[ -f "$dir/MANIFEST" ]] && ! sha256sum --quiet -c "$dir/MANIFEST" >/dev/null 2>&1; then
    echo "warning: the tree differs from the one prepared at $commit; recorded as" \
      "$commit+changed-after-prepare" >&2
    commit="$commit+changed-after-prepare"
  fi
  export JVAE_DATA_DIR="$dir/data" JVAE_GIT_COMMIT="$commit"
  export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
  local missing  # what jvae, its wheels' own dependencies, the benchmarks and the tests import
  missing="$("$python" - <<'EOF'
import importlib.util
names = ("jax", "flax", "optax", "chex", "numpy", "scipy", "sklearn", "orbax.checkpoint", "tqdm",
         "wrapt", "attr", "cloudpickle", "six", "absl", "toolz", "numpyro", "torch", "matplotlib",
         "pytest", "xdist")
def found(name):
  try:
    return importlib.util.find_spec(name) is not None
  except ImportError:
    return False
print(" ".join(n for n in names if not found(n)))
EOF
)"
  : >"$out/import.log"
  [[ -z "$missing" ]] || echo "FINDING: not importable here: $missing" | tee -a "$out/import.log"
  if ! "$python" -c "import distrax, blackjax" >>"$out/import.log" 2>&1; then
    # A finding about the dependency on this image's jax: keep it, then let the benchmarks run.
    echo "FINDING: distrax or blackjax does not import here; retrying with" \
      "benchmarks/device_shim (aliases a newer jax dropped):" | tee -a "$out/import.log"
    tail -n 5 "$out/import.log"
    export PYTHONPATH="$root/benchmarks/device_shim:$PYTHONPATH"
    "$python" -c "import distrax, blackjax" >>"$out/import.log" 2>&1 || {
      tail -n 5 "$out/import.log"; echo "FINDING: the shim did not help; stopping" >&2; exit 1; }
  fi
  nvidia-smi -L 2>/dev/null || echo "(no nvidia-smi)"
  local tag
  tag="$("$python" - <<'EOF'
import jax
kind = jax.devices()[0].device_kind.lower()
print(next((t for t in ("h200", "h100") if t in kind), jax.default_backend()))
EOF
)"
  if [[ "$tag" == cpu && -z "${DEVICE_ALLOW_CPU:-}" ]]; then
    echo "error: JAX sees no accelerator here; nothing to measure (DEVICE_ALLOW_CPU=1 rehearses" \
      "the run on a CPU)" >&2
    exit 1
  fi
  "$python" - <<'EOF' 2>&1 | tee "$out/suite.log"
import importlib.metadata as m
import jax
names = ("jax", "jaxlib", "flax", "optax", "chex", "distrax", "blackjax", "numpyro", "torch")
def version(name):
  try:
    return m.version(name)
  except m.PackageNotFoundError:
    return None
print("versions:", ", ".join(f"{n} {version(n)}" for n in names))
print("devices:", jax.devices(), "commit:", __import__("os").environ["JVAE_GIT_COMMIT"])
EOF
  local only=()
  [[ -n "${ONLY:-}" ]] && read -r -a only <<<"--only $ONLY"
  local status=0
  "$python" -m benchmarks --suite device --tag "$tag" --budget "$budget" --no-render "${only[@]}" 2>&1 \
    | tee -a "$out/suite.log" || status=1
  local records
  records=("$root"/benchmarks/results/*-"$tag".*)
  if [[ -e "${records[0]}" ]]; then
    tar czf "$out/results.tgz" -C "$root/benchmarks/results" "${records[@]##*/}"
    echo "packed ${#records[@]} files into results.tgz" | tee -a "$out/suite.log"
  else
    echo "no records to pack" | tee -a "$out/suite.log"
  fi
  if (( tests_s > 0 )); then
    # Several pytest workers share the GPU: no preallocation of 75% of its memory each. XLA's
    # default compilation (tests/conftest.py's fast flags are XLA:CPU's, and an unknown flag
    # would stop XLA), and float32 matmuls at "highest": the tests' tolerances are float32's,
    # not TF32's, whose effect on the bound precision.py measures.
    XLA_PYTHON_CLIENT_PREALLOCATE=false JVAE_TEST_FULL_XLA=1 \
    JAX_DEFAULT_MATMUL_PRECISION=highest timeout "$tests_s" "$python" -m pytest -q -n 4 \
      --dist loadfile -p no:cacheprovider tests/test_bounds.py tests/test_estimators.py \
      tests/test_objectives.py tests/test_training.py tests/test_trainer_unroll.py \
      tests/test_precision.py tests/test_fast_paths.py tests/test_contract.py \
      tests/test_distributions.py >"$out/tests.log" 2>&1 || status=1
    tail -n 15 "$out/tests.log"
  fi
  return "$status"
}

case "${1:-}" in
  prepare) prepare ;;
  run) shift; run "$@" ;;
  *) echo "usage: bash benchmarks/device.sh prepare | run [BUDGET_S]" >&2; exit 2 ;;
esac
