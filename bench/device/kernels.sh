#!/usr/bin/env bash
# H100 call: Ferrum's CUDA kernels checked against torch (every entry point, every tile
# configuration, attention, RoPE, sampler); with TUNE=1 (default) every configuration is also timed
# into the tuning database $OUT/sm_90a.json (committed as compile/kernels/tuning/sm_90a.json).
source bench/device/setup.sh >/dev/null
D=/tmp/ferrum-data
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.max.sm --format=csv
export PYTHONUNBUFFERED=1
db=()
[ "${TUNE:-1}" = 1 ] && db=(--db "$OUT/sm_90a.json" --tune-budget-s "${TUNE_BUDGET_S:-240}")
python3 bench/kernel_bench.py $D/ferrum_kernels.so --out "$OUT/kernels.json" "${db[@]}" > "$OUT/kernel_bench.log" 2>&1
status=$?
grep -v "^llama3\|^smollm2" "$OUT/kernel_bench.log" | tail -30
exit $status
