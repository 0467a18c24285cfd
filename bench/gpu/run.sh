#!/usr/bin/env bash
# The GPU checks, as one script for one short device session (a machine with a CUDA GPU, a
# Python with a CUDA build of torch and transformers 5, nothing fetched from the network).
# Missing pure-Python packages travel as wheels in .whl/ (sacremoses, gguf).  Each step has its
# own timeout and the next one runs even if it fails; everything printed goes to $OUT/gpu_log.txt.
#
#   OUT=runs/gpu bash bench/gpu/run.sh
set -uo pipefail
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_log.txt") 2>&1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

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

step "pytest -m gpu"
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider -x tests 2>&1 | tail -25

step "torch engine on CUDA: fp32 / fp16 / bf16 vs CPU fp32"
timeout 240 python3 bench/gpu/torch_cuda.py -n 300 | tee "$OUT/torch_cuda.md"

if [ -f eval/sweeps/gpu.toml ]; then
  step "eval sweep on the GPU"
  timeout 240 python3 -m testbed.cli eval --sweep eval/sweeps/gpu.toml --out "$OUT/eval" --no-progress
  cp "$OUT/eval/report.md" "$OUT/eval_report.md" 2>/dev/null
fi
step done
