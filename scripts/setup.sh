#!/usr/bin/env bash
# Create .venv (once) and install npo_lab with its test tools. Safe to run again: pip skips what is there.
# torch is pinned to the CPU build in the same pip command so no resolver step can pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade "pip>=23" >/dev/null
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".[dev,llm,deepspeed]"
