#!/usr/bin/env bash
# H200 call (issue 15, item 4): speed of the new families from shape-only artifacts, weights
# generated on the GPU by bench/gpu_bench.py (random: speed does not depend on the values).
# Qwen3-8B shape at q4f16 and q0f16 (the latter with the transformers Qwen3ForCausalLM peer, eager
# and static cache + torch.compile), then Qwen3-30B-A3B shape at q0f16 (MoE q4 is refused by design:
# experts are built unquantized), last because its generic expert gathers are the slowest and its
# 61 GB of weights the largest. Decode at batch 1/8/64 after 128-token prompts, prefill of 2048 tokens.
# Each gpu_bench run is one process under its own `timeout`, writing $OUT/h200_<shape>.json after
# every decode batch and prefill (marked "partial" until done), so a run cut by its timeout keeps its figures.
# Budget: about 30 s setup + 75 + 210 + 200 s at most (~8.5 min); expected ~5 min.
# Prepare here (the shape artifacts carry no weights, a few MiB each):
#   for a in "qwen3-8b q4f16" "qwen3-8b q0f16" "qwen3-30b-a3b q0f16"; do set -- $a
#     python bench/compile_shape.py $1 --quant $2 --target cuda --arch sm_90a --out .dev/shapes; done
#   mkdir -p .dev/carry-fam
#   for n in qwen3-8b-shape-q4f16-cuda qwen3-8b-shape-q0f16-cuda qwen3-30b-a3b-shape-q0f16-cuda; do
#     tar cJf .dev/carry-fam/$n.tar.xz -C .dev/shapes $n; done
#   cp .dev/carry/tvm_runtime.tar.gz .dev/carry-fam/   # python -m compile.runtime_bundle, cp312 tvm_ffi inside
#   cp .dev/carry-lead/*.whl .dev/carry-fam/
#   du -sh .dev/carry-fam   # carry limit 64 MiB
# Run with carry [".dev/carry-fam"]: bash bench/device/families.sh
source bench/device/setup.sh >/dev/null
export PYTHONUNBUFFERED=1
D=/tmp/ferrum-data
quiet() { grep -v "Warning\|warn"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
bench() {  # seconds shape artifact [gpu_bench options]
  local limit=$1 shape=$2 art=$D/$3; shift 3
  [ -d "$art" ] || { echo "missing $art"; return; }
  echo "== $shape ($(date -u +%T))"
  timeout "$limit" python3 bench/gpu_bench.py "$art" --batches 1 8 64 --prefills 2048 --repeats 3 "$@" \
    --out "$OUT/h200_$shape.json" 2>&1 | quiet
  echo "== $shape done, rc ${PIPESTATUS[0]} ($(date -u +%T))"
}
bench 75 qwen3-8b-q4f16 qwen3-8b-shape-q4f16-cuda
bench 210 qwen3-8b-q0f16 qwen3-8b-shape-q0f16-cuda --peer --peer-short 16 --peer-long 64 --compile-timeout 120
bench 200 qwen3-30b-a3b-q0f16 qwen3-30b-a3b-shape-q0f16-cuda --decode-steps 24
ls -la "$OUT"
