#!/usr/bin/env bash
# H200 call (issue 15): Qwen3-MoE with int4 experts. First the tiny Qwen3-MoE's CUDA artifacts
# (q4f16, q0f16: the expert gathers on ExpertGEMV) against its CPU artifacts of the same
# quantization, then the Qwen3-30B-A3B shape's speed (weights generated on the device): q4f16 on
# ExpertGEMV, q4f16 on TVM's generic gathers (built at a7d02e7, before ExpertGEMV), q0f16 on
# ExpertGEMV last (its 61 GB of weights; built at edd1cc8, when ExpertGEMV still took float16
# gathers: it measured slower than the generic rule, so they no longer take it). Each bench is one process under its own timeout, writing its JSON after
# every batch; decode at batch 1/8/64 after 128 tokens, prefill 2048 (as bench/device/families.sh).
# The device copies the lead's checkout, so this branch's tree travels as a tarball.
# Prepare here (the shape artifacts carry no weights, a few MiB each):
#   python bench/families_gpu_check.py prepare /tmp/wt-B-fgc --only qwen3_moe \
#     --builds cuda:q4f16 cuda:q0f16 llvm:q4f16 llvm:q0f32
#   for q in q4f16 q0f16; do python bench/compile_shape.py qwen3-30b-a3b --quant $q --target cuda \
#     --arch sm_90a --out artifacts/shapes; done   # the generic q4f16 one from the commit before ExpertGEMV
#   D=/work/main/.dev/wt-B; mkdir -p $D/generic
#   tar cJf $D/tree.tar.xz --exclude=artifacts --exclude=.git .
#   tar cJf $D/families.tar.xz -C /tmp/wt-B-fgc art references.npz
#   for q in q4f16 q0f16; do tar cJf $D/$q.tar.xz -C artifacts/shapes qwen3-30b-a3b-shape-$q-cuda; done
#   tar cJf $D/generic/q4f16.tar.xz -C artifacts/generic qwen3-30b-a3b-shape-q4f16-cuda
# Run from the lead's checkout with carry [".dev/carry", ".dev/wt-B"]: bash .dev/wt-B/qwen3_moe_q4.sh
set -o pipefail
export PYTHONUNBUFFERED=1
R=$PWD W=/tmp/wt-B D=/tmp/ferrum-data SITE=/tmp/ferrum-site
mkdir -p $W $D/generic $SITE /tmp/fgc
tar xJf $R/.dev/wt-B/tree.tar.xz -C $W
[ -f $SITE/tvm/__init__.py ] || tar xzf $R/.dev/carry/tvm_runtime.tar.gz -C $SITE
tar xJf $R/.dev/wt-B/families.tar.xz -C /tmp/fgc
for q in q4f16 q0f16; do tar xJf $R/.dev/wt-B/$q.tar.xz -C $D; done
tar xJf $R/.dev/wt-B/generic/q4f16.tar.xz -C $D/generic
cd $W && export PYTHONPATH=$SITE:$W
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
timeout 30 python3 bench/families_gpu_check.py run /tmp/fgc --out "$OUT/h200_qwen3_moe_tiny_check.json" 2>&1 | grep -v -i warn
bench() {  # seconds name artifact
  echo "== $2 ($(date -u +%T))"
  timeout "$1" python3 bench/gpu_bench.py "$D/$3" --batches 1 8 64 --prefills 2048 --repeats 3 --decode-steps 24 \
    --out "$OUT/h200_$2.json" 2>&1 | grep -v -i warn
  echo "== $2 done, rc ${PIPESTATUS[0]} ($(date -u +%T))"
}
bench 70 qwen3-30b-a3b-q4f16 qwen3-30b-a3b-shape-q4f16-cuda
bench 70 qwen3-30b-a3b-q4f16-generic generic/qwen3-30b-a3b-shape-q4f16-cuda
bench 75 qwen3-30b-a3b-q0f16-expertgemv qwen3-30b-a3b-shape-q0f16-cuda
ls -la "$OUT"
