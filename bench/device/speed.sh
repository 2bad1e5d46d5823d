#!/usr/bin/env bash
# H100 call: kernel checks, then the speed benches of the Llama-3-8B shape (q4f16, q0f16 with the
# transformers peer) and of SmolLM2-135M (q4f16, q0f16 with the peer), all with weights generated
# on the GPU (speed does not depend on the values; bench/device/smollm2.sh checks the real ones).
# Carry: the runtime bundle, the kernel library and the shape artifacts (bench/compile_shape.py).
TUNE=0 bash bench/device/kernels.sh || exit 1
source bench/device/setup.sh >/dev/null
export PYTHONUNBUFFERED=1
D=/tmp/ferrum-data
python3 bench/gpu_bench.py $D/llama3-8b-shape-q4f16-cuda $D/llama3-8b-shape-q0f16-cuda --peer --profile \
  --repeats 3 --compile-timeout 200 --out "$OUT/h100_llama3_8b_shape.json" 2>&1 | grep -v "Warning\|warn"
python3 bench/gpu_bench.py $D/smollm2-135m-shape-q4f16-cuda $D/smollm2-135m-shape-q0f16-cuda --peer --profile \
  --repeats 3 --compile-timeout 150 --out "$OUT/h100_smollm2_bench.json" 2>&1 | grep -v "Warning\|warn"
