#!/usr/bin/env bash
# H200 call (issue 15): the tiny families' CUDA artifacts (cuda sm_90a, q0f32 and q0f16; TVM's
# attention kernels, Gemma 2's soft-capped, Phi-3's LongRoPE past its original context) against
# transformers' float32 logits and the CPU artifact's (references.npz, made on the dev machine).
# Prepare here (~20 s a compile, 24 compiles):
#   python bench/families_gpu_check.py prepare /tmp/fgc
#   mkdir -p .dev/fam && tar cJf .dev/fam/families.tar.xz -C /tmp/fgc art references.npz
# Run from the repository root with carry [".dev/carry", ".dev/fam"]: bash bench/device/families_gpu_check.sh
set -o pipefail
export PYTHONUNBUFFERED=1
SITE=/tmp/ferrum-site
mkdir -p "$SITE" /tmp/fgc
[ -f "$SITE/tvm/__init__.py" ] || tar xzf .dev/carry/tvm_runtime.tar.gz -C "$SITE"
export PYTHONPATH="$SITE:$PWD"
tar xJf .dev/fam/families.tar.xz -C /tmp/fgc
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 bench/families_gpu_check.py run /tmp/fgc --out "$OUT/h200_families_check.json" 2>&1 \
  | grep -v -i "warn" | tee "$OUT/families_check.log"
