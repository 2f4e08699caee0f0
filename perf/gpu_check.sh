#!/usr/bin/env bash
# Every GPU figure of perf/ in one command, on a bare GPU machine (perf/gpu_check.py lists them):
#
#   bash perf/gpu_check.sh OUT_DIR          # installs what it needs, then measures (under 8 minutes)
#   bash perf/gpu_check.sh --cpu OUT_DIR    # smoke run: tiny dimensions on the CPU, no install
#
# OUT_DIR receives gpu_check.json and gpu_check.md (the table), plus each part's JSON and log.
# Install (GPU mode): CUDA torch of the version the project pins (TORCH_SPEC, default torch==2.13.0, as
# scripts/setup_env.sh) from the PyTorch CUDA wheel index (TORCH_INDEX; default: the first of cu130,
# cu128, cu126 that has it), unless that version with CUDA is installed already; then DeepSpeed and
# `pip install -e .[train]`. WHEELS=DIR installs from local wheels instead of the network (a machine
# that cannot reach an index). PYTHON picks the interpreter (default python3).
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
want=${TORCH_SPEC#torch==}
pip_from=()
if [ -n "${WHEELS:-}" ]; then
  pip_from=(--no-index --find-links "$WHEELS")
fi
start=$(date +%s)
have_cuda_torch() {
  "$PY" - "$want" <<'EOF'
import sys
try:
    import torch
except ImportError:
    sys.exit(1)
sys.exit(0 if torch.__version__.split("+")[0] == sys.argv[1] and torch.cuda.is_available() else 1)
EOF
}
if ! have_cuda_torch; then
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
# DeepSpeed's build imports torch: no build isolation (as scripts/setup_env.sh)
"$PY" -m pip install -q "${pip_from[@]}" --no-build-isolation "deepspeed>=0.18"
"$PY" -m pip install -q "${pip_from[@]}" -e ".[train]"
echo "gpu_check: installed in $(( $(date +%s) - start )) s" | tee "$out/install.log"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
  | tee -a "$out/install.log"

# the figures themselves: perf/gpu_check.py bounds each part with a timeout (8 minutes in all)
timeout 540 "$PY" perf/gpu_check.py "$out"
