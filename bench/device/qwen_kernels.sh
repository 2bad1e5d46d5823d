#!/usr/bin/env bash
# H200 call (issue 15): Qwen2 (q/k/v bias) and Qwen3 (q/k norm) on Ferrum's CUDA kernels.
# 1. bench/families_gpu_check.py run over the tiny Qwen2/Qwen3 checkpoints (TVM's kernels, head dim
#    16/32) and the kernel-shaped ones (checks/tiny_families.py KERNEL_FAMILIES: Ferrum's kernels,
#    q0f16 and q4f16) -> $OUT/h200_families_check_qwen_kernels.json.
# 2. The Qwen3-8B shape (weights generated on the GPU) at q0f16 with the transformers
#    Qwen3ForCausalLM peer's logits and eager speed (no torch.compile: its figure is in
#    h200_qwen3-8b-q0f16.json), then q4f16, as bench/device/families.sh measured them on TVM's kernels.
# Prepare here (~10 min on the 2-core dev VM):
#   python bench/families_gpu_check.py prepare /tmp/fgc --only qwen2 qwen3 qwen2_kernels qwen3_kernels
#   for q in q0f16 q4f16; do python bench/compile_shape.py qwen3-8b --quant $q --target cuda --arch sm_90a --out .dev/shapes; done
#   D=/work/main/.dev/wt-A; mkdir -p $D
#   tar cJf $D/families.tar.xz -C /tmp/fgc art references.npz
#   for q in q0f16 q4f16; do tar cJf $D/qwen3-8b-shape-$q-cuda.tar.xz -C .dev/shapes qwen3-8b-shape-$q-cuda; done
#   git archive HEAD compile runtime ferrum bench checks | gzip > $D/src.tar.gz   # the device copies /work/main's tree
# Run with carry [".dev/carry", ".dev/wt-A"]:
#   mkdir -p /tmp/src && tar xzf .dev/wt-A/src.tar.gz -C /tmp/src && DEV=$PWD/.dev/wt-A bash /tmp/src/bench/device/qwen_kernels.sh
set -o pipefail
export PYTHONUNBUFFERED=1
SITE=/tmp/ferrum-site DATA=/tmp/ferrum-data SRC=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$SITE" "$DATA" /tmp/fgc
[ -f "$SITE/tvm/__init__.py" ] || tar xzf "$DEV/../carry/tvm_runtime.tar.gz" -C "$SITE"
export PYTHONPATH="$SITE:$SRC"
cd "$SRC"
tar xJf "$DEV/families.tar.xz" -C /tmp/fgc
for q in q0f16 q4f16; do tar xJf "$DEV/qwen3-8b-shape-$q-cuda.tar.xz" -C "$DATA"; done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "== families check ($(date -u +%T))"
timeout 80 python3 bench/families_gpu_check.py run /tmp/fgc --out "$OUT/h200_families_check_qwen_kernels.json" 2>&1 \
  | grep -v -i "warn" | tee "$OUT/families_check_qwen_kernels.log"
bench() {  # seconds quantization [gpu_bench options]
  local limit=$1 q=$2; shift 2
  echo "== qwen3-8b $q ($(date -u +%T))"
  timeout "$limit" python3 bench/gpu_bench.py "$DATA/qwen3-8b-shape-$q-cuda" --batches 1 8 64 --prefills 2048 \
    --repeats 3 "$@" --out "$OUT/h200_qwen3-8b-$q-kernels.json" 2>&1 | grep -v -i "warn"
  echo "== qwen3-8b $q done, rc ${PIPESTATUS[0]} ($(date -u +%T))"
}
bench 90 q0f16 --peer --peer-short 4 --peer-long 12 --no-peer-compile
bench 60 q4f16
ls -la "$OUT"
