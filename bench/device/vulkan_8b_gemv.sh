#!/usr/bin/env bash
# Llama-3-8B shape q4f16 on the H200's Vulkan: an artifact compiled with this checkout's webgpu
# schedules ("after") beside an earlier compile of the same shape ("before") and our CUDA q4f16, in
# one call (issue 12). bench/results/h200_vulkan_8b_gemv.json is "after" = commit 584ce5e (dlight's
# vulkan GEMV tiles, since reverted) against main's schedules.
#
#   bash bench/device/vulkan_8b_gemv.sh prepare DIR BEFORE   # here; BEFORE holds the older
#        llama3-8b-shape-q4f16-vulkan and llama3-8b-shape-q4f16-cuda (e.g. vulkan_8b.sh's shapes)
#   bash bench/device/vulkan_8b_gemv.sh run DIR              # on the GPU machine; carry DIR, .dev/carry
#
# prepare compiles the "after" artifact with this checkout (bench/compile_shape.py), packs it with
# BEFORE's two as vk-after, vk-before and cuda, takes the Vulkan loader .debs and wgpu-native as
# vulkan_8b.sh does and packs this checkout's ferrum/ runtime/ bench/ checks/ (src.tar: untar it at
# the repository root first). run does decode batch 1 and 8 (128 tokens of context) and prefill 512
# in one process: after, before, after again (the first Vulkan artifact of a process has been seen
# slower), then CUDA.
set -euo pipefail
mode=${1:?prepare or run}
DIR=${2:?DIR}
cd "$(dirname "$0")/../.."
source bench/device/vulkan_common.sh
if [ "$mode" = prepare ]; then
  BEFORE=${3:?BEFORE folder}
  PY=${PY:-.venv/bin/python}
  mkdir -p "$DIR/gl" "$DIR/shapes" "$DIR/build"
  [ -f "$DIR/build/llama3-8b-shape-q4f16-vulkan/manifest.json" ] ||
    "$PY" bench/compile_shape.py llama3-8b --quant q4f16 --target vulkan --out "$DIR/build"
  rm -rf "$DIR/shapes"/* && cp -r "$DIR/build/llama3-8b-shape-q4f16-vulkan" "$DIR/shapes/vk-after"
  cp -r "$BEFORE/llama3-8b-shape-q4f16-vulkan" "$DIR/shapes/vk-before"
  cp -r "$BEFORE/llama3-8b-shape-q4f16-cuda" "$DIR/shapes/cuda"
  tar cJf "$DIR/shapes.tar.xz" -C "$DIR/shapes" .
  vulkan_pack "$DIR"
  exit 0
fi
vulkan_install "$DIR"
python3 bench/vulkan_bench.py "$DATA"/vk-after "$DATA"/vk-before "$DATA"/vk-after "$DATA"/cuda \
  --batches 1 8 --prefills 512 --repeats 10 --prefill-repeats 2 \
  --out "${OUT:-/tmp}/h200_vulkan_8b_gemv.json" 2>&1 | grep -v "XDG_RUNTIME_DIR\|Warning"
