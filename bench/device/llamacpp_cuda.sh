#!/usr/bin/env bash
# H200 call(s): llama.cpp's CUDA backend as the peer of our CUDA path, same machine, same shapes,
# random weights on both sides. llama.cpp is built there from the llama-cpp-python sdist's vendored
# source; F16 GGUFs of our artifacts' shapes are written there by bench/random_gguf.py, quantized to
# Q4_0 by llama-quantize, and timed by `llama-bench -ngl 99 -fa 1 -p 512,2048 -n 128`; our
# shape-only artifacts run bench/gpu_bench.py (batch-1 decode, prefill 512/2048) in the same lease.
# The build takes about six minutes of the machine's 16 cores, so the work is two calls on one warm
# machine (the second within 30 s of the first), or one call with PHASE=all when time allows:
#   PHASE=build bash bench/device/llamacpp_cuda.sh   # build (cores 2-15) | GGUFs, then ours (cores 0-1)
#   PHASE=bench bash bench/device/llamacpp_cuda.sh   # quantize, llama-bench, the ratios
# Prepare here (carry .dev/carry and .dev/carry-llamacpp):
#   pip download --no-deps --no-binary=:all: llama-cpp-python==0.3.36 -d /tmp/sdist
#   tar xzf /tmp/sdist/llama_cpp_python-0.3.36.tar.gz -C /tmp && cd /tmp/llama_cpp_python-0.3.36/vendor &&
#     tar cJf $REPO/.dev/carry-llamacpp/llama.cpp-src.tar.xz --exclude=llama.cpp/models \
#       --exclude=llama.cpp/docs --exclude=llama.cpp/benches llama.cpp        # 9 MB
#   pip download --no-deps gguf==0.19.0 -d .dev/carry-llamacpp
#   for q in q0f16 q4f16; do python bench/compile_shape.py llama3-8b --quant $q --target cuda --arch sm_90a --out .dev/shapes; done
#   python bench/compile_shape.py smollm2-135m --quant q0f16 --target cuda --arch sm_90a --out .dev/shapes
#   tar cJf .dev/carry-llamacpp/shapes.tar.xz -C .dev/shapes llama3-8b-shape-q0f16-cuda llama3-8b-shape-q4f16-cuda smollm2-135m-shape-q0f16-cuda
#   python -m compile.runtime_bundle .dev/carry/tvm_runtime.tar.gz --tvm-ffi-wheel apache_tvm_ffi-...-cp312-...whl
source bench/device/setup.sh >/dev/null
export PYTHONUNBUFFERED=1
D=/tmp/ferrum-data
B=/tmp/llamacpp-build
G=/tmp/llamacpp-gguf
mkdir -p "$G"
ARTS="$D/llama3-8b-shape-q0f16-cuda $D/llama3-8b-shape-q4f16-cuda $D/smollm2-135m-shape-q0f16-cuda"
quiet() { grep -v "Warning\|warn"; }
# the build on cores 2-15, the GGUF writer and our step on 0-1 (where taskset exists)
SMALL=""; BIG=""
command -v taskset >/dev/null && { SMALL="taskset -c 0-1"; BIG="taskset -c 2-15"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader

if [ "${PHASE:-all}" != bench ]; then
  (cmake -S $D/llama.cpp -B $B -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
     -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >$G/cmake.log 2>&1 &&
   $BIG cmake --build $B -j14 --target llama-bench llama-quantize >$G/build.log 2>&1
   echo "llama.cpp build rc=$?" >>$G/build.log) &
  build=$!
  $SMALL python3 bench/random_gguf.py $D/llama3-8b-shape-q0f16-cuda $G/llama3-8b-f16.gguf
  $SMALL python3 bench/random_gguf.py $D/smollm2-135m-shape-q0f16-cuda $G/smollm2-f16.gguf
  # ours beside the build: the two cores the build leaves free (the step is one Python thread)
  $SMALL python3 bench/gpu_bench.py $ARTS --batches 1 --prefills 512 2048 --repeats 3 \
    --out "$OUT/h200_ours_vs_llamacpp.json" 2>&1 | quiet | tail -20
  cp "$OUT/h200_ours_vs_llamacpp.json" $G/ 2>/dev/null
  wait $build
  tail -3 $G/build.log
fi

if [ "${PHASE:-all}" != build ]; then
  [ -x $B/bin/llama-bench ] || { echo "no llama-bench: run PHASE=build first on this warm machine"; exit 1; }
  [ -f $G/llama3-8b-q4_0.gguf ] || $B/bin/llama-quantize $G/llama3-8b-f16.gguf $G/llama3-8b-q4_0.gguf Q4_0 16 2>&1 | tail -2
  for m in llama3-8b-f16 llama3-8b-q4_0 smollm2-f16; do
    $B/bin/llama-bench -m $G/$m.gguf -ngl 99 -fa 1 -p 512,2048 -n 128 -r 3 -o json >$G/$m.bench.json 2>$G/$m.bench.log ||
      tail -5 $G/$m.bench.log
  done
  python3 - "$G" "$OUT/h200_llamacpp_peer.json" <<'EOF'
import json, sys
from pathlib import Path
g, out = Path(sys.argv[1]), Path(sys.argv[2])
pairs = {"llama3-8b-f16": "llama3-8b-shape-q0f16-cuda", "llama3-8b-q4_0": "llama3-8b-shape-q4f16-cuda",
         "smollm2-f16": "smollm2-135m-shape-q0f16-cuda"}
ours_file = g / "h200_ours_vs_llamacpp.json"
ours = json.loads(ours_file.read_text()) if ours_file.exists() else {}
rows = []
for peer, art in pairs.items():
    runs = json.loads((g / f"{peer}.bench.json").read_text())
    row = {"peer_model": peer, "ours": art}
    for r in runs:
        if r["n_gen"]:
            row["peer_tg128_tok_s"] = r["avg_ts"]
        else:
            row[f"peer_pp{r['n_prompt']}_ms"] = r["n_prompt"] / r["avg_ts"] * 1e3
    mine = next((a for a in ours.get("results", []) if a.get("artifact") == art), None)
    if mine:
        row["ours_b1_sampled_tok_s"] = mine["decode"][0]["sampled_tok_s"]
        row["tg128_ours_over_peer"] = row["ours_b1_sampled_tok_s"] / row["peer_tg128_tok_s"]
        for p in mine["prefill"]:
            row[f"ours_pp{p['tokens']}_ms"] = p["prefill_ms"]
            if f"peer_pp{p['tokens']}_ms" in row:
                row[f"pp{p['tokens']}_peer_over_ours"] = row[f"peer_pp{p['tokens']}_ms"] / p["prefill_ms"]
    rows.append(row)
result = {"device": ours.get("device"), "peer": "llama.cpp (llama-cpp-python 0.3.36 vendored), CUDA, -fa 1",
          "command": "PHASE=build then PHASE=bench bash bench/device/llamacpp_cuda.sh", "rows": rows}
out.write_text(json.dumps(result, indent=1))
print(json.dumps(rows, indent=1))
EOF
fi
