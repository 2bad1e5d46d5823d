#!/usr/bin/env bash
# H200 call (issue 15), after bench/device/qwen_kernels.sh: the Qwen2.5-7B shape (q/k/v biases) on
# Ferrum's CUDA kernels, q0f16 with the transformers Qwen2ForCausalLM peer's logits and eager speed
# and the per-kernel profile (the bias add's share), then q4f16. Weights generated on the GPU.
# Prepare here (as qwen_kernels.sh, plus):
#   for q in q0f16 q4f16; do python bench/compile_shape.py qwen2.5-7b --quant $q --target cuda --arch sm_90a --out .dev/shapes
#     tar cJf $D/qwen2.5-7b-shape-$q-cuda.tar.xz -C .dev/shapes qwen2.5-7b-shape-$q-cuda; done
# Run with carry [".dev/carry", ".dev/wt-A"]:
#   mkdir -p /tmp/src && tar xzf .dev/wt-A/src.tar.gz -C /tmp/src && DEV=$PWD/.dev/wt-A bash /tmp/src/bench/device/qwen2_kernels.sh
set -o pipefail
export PYTHONUNBUFFERED=1
SITE=/tmp/ferrum-site DATA=/tmp/ferrum-data SRC=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$SITE" "$DATA"
[ -f "$SITE/tvm/__init__.py" ] || tar xzf "$DEV/../carry/tvm_runtime.tar.gz" -C "$SITE"
export PYTHONPATH="$SITE:$SRC"
cd "$SRC"
for a in qwen2.5-7b-shape-q0f16-cuda qwen2.5-7b-shape-q4f16-cuda; do tar xJf "$DEV/$a.tar.xz" -C "$DATA"; done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
bench() {  # seconds artifact output [gpu_bench options]
  local limit=$1 art=$2 out=$3; shift 3
  echo "== $art ($(date -u +%T))"
  timeout "$limit" python3 bench/gpu_bench.py "$DATA/$art" "$@" --out "$OUT/$out" 2>&1 | grep -v -i "warn"
  echo "== $art done, rc ${PIPESTATUS[0]} ($(date -u +%T))"
}
bench 70 qwen2.5-7b-shape-q0f16-cuda h200_qwen2.5-7b-q0f16-kernels.json --batches 1 8 64 --prefills 2048 --repeats 3 \
  --peer --peer-short 4 --peer-long 12 --no-peer-compile --profile
bench 40 qwen2.5-7b-shape-q4f16-cuda h200_qwen2.5-7b-q4f16-kernels.json --batches 1 8 64 --prefills 2048 --repeats 3
ls -la "$OUT"
