#!/usr/bin/env bash
# Every GPU figure of perf/ in one command, on a bare GPU machine (perf/gpu_check.py lists them):
#
#   bash perf/gpu_check.sh OUT_DIR          # installs what it needs, then measures (under 8 minutes)
#   bash perf/gpu_check.sh --cpu OUT_DIR    # smoke run: tiny dimensions on the CPU, no install
#
# OUT_DIR receives gpu_check.json and gpu_check.md (the table), plus each part's JSON and log.
# Install (GPU mode): only what the perf scripts import and the machine lacks. A CUDA build of torch that
# is already there is used, whatever its version (GPU images come with one; the version is recorded in
# gpu_check.json); without one, TORCH_SPEC (default torch==2.13.0, as scripts/setup_env.sh) is installed
# from the PyTorch CUDA wheel index (TORCH_INDEX; default: the first of cu130, cu128, cu126 that has it).
# The perf scripts need the model's own imports only (transformers, safetensors, tokenizers, sentencepiece,
# numpy, pillow, pyyaml, tqdm; no DeepSpeed, Hydra or W&B): those missing are installed. WHEELS=DIR
# installs from local wheels instead of the network (a machine that cannot reach an index).
# PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

cpu=0
if [ "${1:-}" = "--cpu" ]; then
  cpu=1
  shift
fi
if [ $# -ne 1 ]; then
  echo "usage: bash perf/gpu_check.sh [--cpu] OUT_DIR" >&2
  exit 2
fi
out=$1
mkdir -p "$out"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

if [ "$cpu" = 1 ]; then
  exec "$PY" perf/gpu_check.py --cpu "$out"
fi

TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
pip_from=()
if [ -n "${WHEELS:-}" ]; then
  pip_from=(--no-index --find-links "$WHEELS")
fi
start=$(date +%s)
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA build of torch in $PY (or no GPU visible to it): installing $TORCH_SPEC"
  if [ -n "${WHEELS:-}" ]; then
    "$PY" -m pip install -q "${pip_from[@]}" "$TORCH_SPEC"
  else
    installed=0
    for index in ${TORCH_INDEX:-https://download.pytorch.org/whl/cu130 https://download.pytorch.org/whl/cu128 https://download.pytorch.org/whl/cu126}; do
      if "$PY" -m pip install -q "$TORCH_SPEC" --index-url "$index"; then
        installed=1
        break
      fi
    done
    if [ "$installed" = 0 ]; then
      echo "gpu_check: could not install $TORCH_SPEC with CUDA; set TORCH_INDEX or WHEELS" >&2
      exit 3
    fi
  fi
fi
# the modules libra.model and the LLaMA baseline import (pyproject.toml's dependencies, as pip names them)
missing=$("$PY" - <<'EOF'
import importlib.util

needed = {"transformers": "transformers>=5.17", "safetensors": "safetensors", "tokenizers": "tokenizers",
          "sentencepiece": "sentencepiece", "numpy": "numpy", "PIL": "pillow", "yaml": "pyyaml", "tqdm": "tqdm"}
print(" ".join(spec for module, spec in needed.items() if importlib.util.find_spec(module) is None))
EOF
)
if [ -n "$missing" ]; then
  echo "gpu_check: installing $missing"
  # one requirement per word
  # shellcheck disable=SC2086
  "$PY" -m pip install -q "${pip_from[@]}" $missing
fi
echo "gpu_check: ready in $(( $(date +%s) - start )) s" | tee "$out/install.log"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(), 'transformers', transformers.__version__)" \
  | tee -a "$out/install.log"

# the figures themselves: perf/gpu_check.py bounds each part with a timeout (8 minutes in all)
timeout 540 "$PY" perf/gpu_check.py "$out"
