#!/usr/bin/env bash
# H100 call: kernel checks, then the Llama-3-8B-shape artifacts (weights generated on the GPU):
# decode/prefill/TTFT, roofline, per-kernel profile, and the transformers peer (q0f16); then the
# same q0f16 decode/prefill with programmatic dependent launch off (FERRUM_PDL=0), for the A/B.
# Carry: the runtime bundle, the kernel library and the shape artifacts (bench/compile_shape.py).
TUNE=${TUNE:-0} bash bench/device/kernels.sh || exit 1
source bench/device/setup.sh >/dev/null
export PYTHONUNBUFFERED=1
D=/tmp/ferrum-data
python3 bench/gpu_bench.py $D/llama3-8b-shape-q4f16-cuda $D/llama3-8b-shape-q0f16-cuda --peer --profile \
  --repeats 3 --compile-timeout 200 --out "$OUT/h100_llama3_8b_shape.json" 2>&1 | grep -v "Warning\|warn"
FERRUM_PDL=0 python3 bench/gpu_bench.py $D/llama3-8b-shape-q0f16-cuda --batches 1 8 64 --prefills 2048 --repeats 3 \
  --out "$OUT/h100_llama3_8b_shape_pdl_off.json" 2>&1 | grep -v "Warning\|warn"
