#!/usr/bin/env bash
# The GPU checks, as one script for one short device session (a machine with a CUDA GPU, a
# Python with a CUDA build of torch and transformers 5, nothing fetched from the network).
# Missing pure-Python packages travel as wheels in .whl/ (sacremoses, gguf).  Each step has its
# own timeout and the next one runs even if it fails; everything printed goes to $OUT/gpu_log.txt.
#
#   OUT=runs/gpu bash bench/gpu/run.sh
set -uo pipefail
# $OUT gets the few files worth keeping (log, tables, report, plot); full run directories go to $WORK.
OUT=${OUT:-runs/gpu}
WORK=${WORK:-/tmp/testbed-gpu}
mkdir -p "$OUT" "$WORK"
exec > >(tee "$OUT/gpu_log.txt") 2>&1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }
# STEPS picks what runs after the environment report (default: all of them).  Issue 12's GPU checks are
# STEPS=pytest,static,torch: at most 150 + 210 + 120 s by their timeouts (8 minutes).
STEPS=${STEPS:-pytest,static,torch,eval,serve}
want() { [[ ",$STEPS," == *",$1,"* ]]; }

step environment
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING" | tail -3
python3 - <<'PY'
import glob, importlib.util
import torch, transformers
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("transformers", transformers.__version__)
if importlib.util.find_spec("onnxruntime"):
    import onnxruntime as ort
    print("onnxruntime", ort.__version__, "providers", ort.get_available_providers())
if importlib.util.find_spec("ctranslate2"):
    import ctranslate2
    print("ctranslate2", ctranslate2.__version__, "cuda devices", ctranslate2.get_cuda_device_count())
print("libcublas on this machine:", sorted({p.rsplit("/", 1)[1] for p in glob.glob("/opt/**/libcublas.so*", recursive=True)
                                      + glob.glob("/usr/**/libcublas.so*", recursive=True)}))
PY


if want static; then
  # eager CUDA fp32 (the ratio baseline and the tokens to match) vs the static-cache engines: the step as a
  # CUDA graph in fp32 / fp16 / bf16 / int8 (torch._int_mm) / fp8 (torch._scaled_mm), and torch.compile
  # (reduce-overhead); SingleStream only, rows printed as they finish
  step "torch static KV cache on CUDA: eager vs CUDA graph, fp16/bf16, int8/fp8 matmuls, torch.compile"
  timeout ${STATIC_TIMEOUT:-210} python3 bench/gpu/torch_cuda.py -n 200 --no-offline \
    --configs cuda:fp32,torch-static/cuda:fp32,torch-static/cuda:bf16,torch-static/cuda:fp16,torch-static/cuda:int8,torch-static/cuda:fp8,torch-compile/cuda:fp32,torch-compile/cuda:bf16 \
    | tee "$OUT/torch_static_cuda.md"
fi
if want torch; then
  step "torch engine on CUDA: fp32 / fp16 / bf16 vs CPU fp32"
  timeout ${TORCH_TIMEOUT:-120} python3 bench/gpu/torch_cuda.py -n 200 | tee "$OUT/torch_cuda.md"
fi

if want eval && [ -f eval/sweeps/gpu.toml ]; then
  step "eval sweep on the GPU"
  timeout ${EVAL_TIMEOUT:-240} python3 -m testbed eval --sweep eval/sweeps/gpu.toml --out "$WORK/eval" --no-progress
  cat "$WORK/eval/report.md"
  cp "$WORK/eval/report.md" "$OUT/eval_report.md"; cp "$WORK/eval/results.jsonl" "$OUT/eval_results.jsonl"
  cp "$WORK/eval/pareto.png" "$OUT/eval_pareto.png"
fi
if want serve && [ -d testbed/serve ]; then
  for bs in 1 32; do
    step "served on CUDA fp32, max batch $bs: find the peak Poisson rate meeting p99 e2e <= 500 ms"
    port=$((8100 + bs))
    python3 -m testbed serve --device cuda --max-batch-size "$bs" --max-queue 512 --port "$port" --log-level warning &
    pid=$!
    for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done
    timeout ${PEAK_TIMEOUT:-150} python3 -m testbed bench --url "http://127.0.0.1:$port" --scenario server --find-peak --slo e2e=500 \
      --duration 5 --warmup 10 --seed 0 --no-progress --out "$WORK/serve_b$bs"
    cp "$WORK/serve_b$bs/find_peak.json" "$OUT/find_peak_b$bs.json"
    kill "$pid"; wait "$pid" 2>/dev/null
  done
fi
if want pytest; then
  step "pytest -m gpu"
  timeout ${PYTEST_TIMEOUT:-150} python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tail -25
fi
step done
