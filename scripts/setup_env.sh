#!/usr/bin/env bash
# Creates .venv with everything libra needs, CPU torch first. Idempotent: a stamp keyed on
# pyproject.toml skips the work when nothing changed. GPU users: install the torch build for
# your CUDA into the venv before running this, and set TORCH_SPEC to it (e.g. TORCH_SPEC=torch).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
stamp="$VENV/.libra-installed-$(sha1sum pyproject.toml | cut -c1-12)"
[ -f "$stamp" ] && exit 0
python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip setuptools wheel
# CPU build, installed before anything that depends on torch so nothing pulls a CUDA build.
"$PY" -m pip install -q "$TORCH_SPEC"
# DeepSpeed is a source package whose build imports torch: no build isolation.
"$PY" -m pip install -q --no-build-isolation "deepspeed>=0.18"
"$PY" -m pip install -q -e ".[train,test,lint]"
touch "$stamp"
