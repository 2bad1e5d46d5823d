#!/usr/bin/env bash
# H100 call: Ferrum's CUDA kernels checked against torch and every tile configuration timed (the
# tuning database), then a short speed check of shape-only artifacts built with the kernels.
source bench/device/setup.sh >/dev/null
D=/tmp/ferrum-data
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.max.sm --format=csv
python3 -c "import tvm; print('tvm', tvm.__version__, 'runtime_only', tvm.base._RUNTIME_ONLY)"
export PYTHONUNBUFFERED=1
python3 bench/kernel_bench.py $D/ferrum_kernels.so --out "$OUT/kernels.json" --db "$OUT/sm_90a.json" \
  --tune-budget-s "${TUNE_BUDGET_S:-200}" 2>&1 | tee "$OUT/kernel_bench.log" | grep -v "^llama3\|^smollm2" 
grep "^llama3\|^smollm2" "$OUT/kernel_bench.log" | tail -12
python3 bench/gpu_bench.py $D/llama3-8b-shape-q0f16-cuda $D/smollm2-135m-shape-q0f16-cuda \
  --batches 1 8 64 --prefills 512 2048 --repeats 3 --decode-steps 24 --out "$OUT/sanity.json" 2>&1 \
  | grep -v "Warning\|warn" | tee "$OUT/sanity.log"
