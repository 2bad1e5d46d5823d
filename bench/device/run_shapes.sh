#!/usr/bin/env bash
# Call 1 on the H100: Llama-3-8B-shape q0f16 (with the transformers peer) and q4f16.
source bench/device/setup.sh
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv
python3 -c "import tvm, sys; print('tvm', tvm.__version__, 'runtime_only', tvm.base._RUNTIME_ONLY)"
python3 bench/gpu_bench.py .dev/shapes/llama3-8b-shape-q0f16-cuda .dev/shapes/llama3-8b-shape-q4f16-cuda \
  --peer --repeats 3 --out "$OUT/h100_llama3_8b_shape.json" 2>&1 | tee "$OUT/h100_llama3_8b_shape.log"
