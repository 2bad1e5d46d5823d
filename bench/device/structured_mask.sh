#!/usr/bin/env bash
# H200 call (issue 14): the grammar bitmask applied by the GPU sampler. 1) the masked sampler
# against numpy (checks/cuda_kernels.py::check_masked_sampler, and the unmasked check beside it);
# 2) bench/structured_bench.py on the SmolLM2 shape (real tokenizer, weights generated on the
# device): grammar checks, device-masked greedy = host-masked greedy, and 16 json_schema requests
# against 16 plain ones, with the constrained side also run with host masks (the old path) as the
# peer in the same run; 3) the same on the Llama-3-8B q4f16 shape where it was carried (built with
# SmolLM2's tokenizer: no Llama-3 tokenizer travels, so its LM head has 79k padding ids no grammar
# allows, and llguidance's masks cost what a 49k vocabulary costs, less than Llama-3's 128k).
# Runs over main's checkout with this branch's sources laid over it. Prepare here (from the branch):
#   python bench/compile_shape.py smollm2-135m --quant q0f16 --target cuda --arch sm_90a --out .dev/shapes \
#       --tokenizer-from artifacts/smollm2-135m-instruct-q4f32-llvm
#   H=/work/main/.dev/wt-h14; mkdir -p $H
#   git archive -o $H/src.tar HEAD
#   tar cJf $H/smollm2-shape.tar.xz -C .dev/shapes smollm2-135m-shape-q0f16-cuda
#   (optional) the same for bench/compile_shape.py llama3-8b --quant q4f16 ... -> $H/llama3-8b-shape.tar.xz
#   cp "$(python -c 'from compile.kernels.build import build_shared; print(build_shared(("sm_90a",)))')" \
#       $H/ferrum_kernels.so
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_31_x86_64 -d $H \
#       llguidance==1.9.1
# and run `tar xf .dev/wt-h14/src.tar && bash bench/device/structured_mask.sh` with carry
# [".dev/wt-h14", ".dev/carry"] (the runtime-only TVM bundle is .dev/carry's). Knobs: CHECK_KERNELS=0,
# LLAMA=0 skip those parts; ROUNDS, OUTPUT_LEN and MASK_THREADS ("default 2 4") shape the SmolLM2 runs.
H=${H:-.dev/wt-h14}
tar xf "$H/src.tar" -C . || exit 1
source bench/device/setup.sh >/dev/null
pip install -q --no-deps --no-compile --target /tmp/ferrum-site "$H"/*.whl 2>&1 | grep -v WARNING
for a in "$H"/*.tar.xz; do [ -f "$a" ] && tar xJf "$a" -C /tmp/ferrum-data; done
export PYTHONUNBUFFERED=1
quiet() { grep -v "Warning\|warn"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
if [ "${CHECK_KERNELS:-1}" = 1 ]; then
timeout 60 python3 - "$H/ferrum_kernels.so" "$OUT/h200_masked_sampler.json" <<'EOF' || exit 1
import json, sys
from checks.cuda_kernels import Kernels, check_masked_sampler, check_sampler
kern = Kernels(sys.argv[1])
report = {"sampler": check_sampler(kern), "masked_sampler": check_masked_sampler(kern)}
print(json.dumps(report))
open(sys.argv[2], "w").write(json.dumps(report, indent=2))
sys.exit(0 if all(r["ok"] for r in report.values()) else 1)
EOF
fi
D=/tmp/ferrum-data
# MASK_THREADS: llguidance pool sizes to run SmolLM2 with, one run each ("default": its own choice)
for t in ${MASK_THREADS:-default}; do
  extra=(); name=""
  [ "$t" != default ] && extra=(--mask-threads "$t") && name="_threads$t"
  timeout 100 python3 bench/structured_bench.py $D/smollm2-135m-shape-q0f16-cuda --load-format dummy --concurrency 16 \
    --rounds "${ROUNDS:-3}" --output-len "${OUTPUT_LEN:-64}" "${extra[@]}" \
    --out "$OUT/h200_smollm2_structured_masked${name}.json" 2>&1 | quiet
done
if [ "${LLAMA:-1}" = 1 ] && [ -d $D/llama3-8b-shape-q4f16-cuda ]; then
  timeout 110 python3 bench/structured_bench.py $D/llama3-8b-shape-q4f16-cuda --load-format dummy --concurrency 16 \
    --rounds 2 --out "$OUT/h200_llama3_8b_structured_masked.json" 2>&1 | quiet
fi
