#!/usr/bin/env bash
# H200 call: the CUDA path of main as merged, end to end on a SmolLM2-shape q0f16 artifact with the
# real SmolLM2 tokenizer and weights generated on the device (random: speed and grammar figures
# do not depend on weight values). 1) the engine in-process at c=1/64 (device sampling, decode
# graphs); 2) bench/structured_bench.py: grammar checks that hold whatever the weights (a choice, a
# regex, plain requests beside constrained ones equal to themselves alone) and the cost of 16
# json_schema requests against 16 plain ones (constrained steps sample on the host); 3) the bare step.
# Prepare here (carry .dev/carry-lead):
#   python bench/compile_shape.py smollm2-135m --quant q0f16 --target cuda --arch sm_90a --out .dev/shapes \
#       --tokenizer-from artifacts/smollm2-135m-instruct-q4f32-llvm
#   mkdir -p .dev/carry-lead && tar cJf .dev/carry-lead/smollm2-shape.tar.xz -C .dev/shapes smollm2-135m-shape-q0f16-cuda
#   cp .dev/carry/tvm_runtime.tar.gz .dev/carry-lead/   # python -m compile.runtime_bundle, cp312 tvm_ffi inside
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_31_x86_64 -d .dev/carry-lead llguidance==1.9.1
source bench/device/setup.sh >/dev/null
export PYTHONUNBUFFERED=1
S=/tmp/ferrum-data/smollm2-135m-shape-q0f16-cuda
quiet() { grep -v "Warning\|warn"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 120 python3 bench/offline_bench.py $S --load-format dummy --min-requests 16 --concurrency 1 64 \
  --prompt-len 32 --output-len 128 --max-num-seqs 64 --max-num-batched-tokens 2048 \
  --out "$OUT/h200_merged_offline.json" 2>&1 | quiet | grep -v phases
timeout 200 python3 bench/structured_bench.py $S --load-format dummy --concurrency 16 --rounds 3 \
  --out "$OUT/h200_smollm2_structured.json" 2>&1 | quiet
timeout 100 python3 bench/gpu_bench.py $S --batches 1 64 --prefills 128 --repeats 3 \
  --out "$OUT/h200_merged_bare.json" 2>&1 | quiet | tail -12
