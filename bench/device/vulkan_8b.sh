#!/usr/bin/env bash
# Llama-3-8B shape on the H200's Vulkan (Ferrum's WebGPU plugin over wgpu-native, NVIDIA's ICD)
# beside our CUDA q4f16 artifact of the same shape, in one call (issue 12). Weights are generated
# on the device (runtime/dummy_weights.py), so the artifacts carry none.
#
#   bash bench/device/vulkan_8b.sh prepare [DIR]   # here: builds DIR (default .dev/vulkan-8b)
#   bash bench/device/vulkan_8b.sh run DIR         # on the GPU machine, carry DIR and .dev/carry
#
# prepare compiles the shape-only artifacts (bench/compile_shape.py: vulkan q4f16 and q0f16, parameters
# split under the default 128 MiB binding limit; cuda q4f16 for sm_90a), downloads the Vulkan loader
# and GL dispatch .debs NVIDIA's ICD needs (the device README's recipe), and packs wgpu-native (the
# `wgpu` package folder) and this checkout's ferrum/ runtime/ bench/ checks/ (src.tar: the device
# runs over another checkout; untar it at the repository root first). run installs them and runs
# bench/vulkan_bench.py: decode batch 1/8/32 (128 tokens of context) and prefill 512/2048.
set -euo pipefail
mode=${1:?prepare or run}
DIR=${2:-.dev/vulkan-8b}
cd "$(dirname "$0")/../.."
source bench/device/vulkan_common.sh
if [ "$mode" = prepare ]; then
  PY=${PY:-.venv/bin/python}
  mkdir -p "$DIR/gl" "$DIR/shapes"
  for spec in "q4f16 vulkan" "q0f16 vulkan" "q4f16 cuda"; do
    set -- $spec
    [ -f "$DIR/shapes/llama3-8b-shape-$1-$2/manifest.json" ] ||
      "$PY" bench/compile_shape.py llama3-8b --quant "$1" --target "$2" --arch sm_90a --out "$DIR/shapes"
  done
  tar cJf "$DIR/shapes.tar.xz" -C "$DIR/shapes" .
  vulkan_pack "$DIR"
  exit 0
fi
vulkan_install "$DIR"
python3 bench/vulkan_bench.py "$DATA"/llama3-8b-shape-q4f16-vulkan "$DATA"/llama3-8b-shape-q4f16-cuda \
  "$DATA"/llama3-8b-shape-q0f16-vulkan --batches 1 8 32 --prefills 512 2048 --repeats 10 --prefill-repeats 2 \
  --out "${OUT:-/tmp}/h200_vulkan_8b.json" 2>&1 | grep -v "XDG_RUNTIME_DIR\|Warning"
