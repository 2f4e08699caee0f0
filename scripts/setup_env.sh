#!/usr/bin/env bash
# Creates .venv with everything libra needs, torch first. Idempotent: a stamp keyed on
# pyproject.toml skips the work when nothing changed. TORCH_INDEX picks the torch build
# (README: Install): the PyTorch CPU index for CPU-only machines, a CUDA index for GPUs; unset, pip's
# configured indexes are used. TORCH_SPEC changes the version (default torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCH_INDEX=${TORCH_INDEX:-}
stamp="$VENV/.libra-installed-$(sha1sum pyproject.toml | cut -c1-12)"
[ -f "$stamp" ] && exit 0
python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip setuptools wheel
# Installed before anything that depends on torch, so nothing pulls another build.
if [ -n "$TORCH_INDEX" ]; then
  "$PY" -m pip install -q "$TORCH_SPEC" --index-url "$TORCH_INDEX"
else
  "$PY" -m pip install -q "$TORCH_SPEC"
fi
# DeepSpeed is a source package whose build imports torch: no build isolation.
"$PY" -m pip install -q --no-build-isolation "deepspeed>=0.18"
"$PY" -m pip install -q -e ".[train,serve,demo,test,lint]"
touch "$stamp"
