#!/usr/bin/env bash
# H200 call: SmolLM2-135M shape-only artifacts (bench/compile_shape.py, weights generated there)
# on Vulkan through Ferrum's WebGPU plugin beside our CUDA artifact, decode batch 1/8/32 and
# prefill 512/2048 (bench/vulkan_bench.py). Run from a folder holding a copy of ferrum/, runtime/,
# bench/, the shape artifacts in shapes/, the Vulkan loader's .debs in gl/, the runtime-only TVM
# bundle (tvm_runtime.tar.gz) and wgpu-native as a `wgpu` package folder (wgpu/resources/*.so):
# the device tool's README says how to carry the loader; NVIDIA's ICD is on the machine.
cd "$(dirname "$0")/../.."
for f in gl/*.deb; do dpkg -x "$f" /; done
ldconfig
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES=$icd
SITE=/tmp/ferrum-vk-site
mkdir -p "$SITE"
[ -f "$SITE/tvm/__init__.py" ] || tar xzf tvm_runtime.tar.gz -C "$SITE"
cp -r wgpu "$SITE/"
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 bench/vulkan_bench.py shapes/*-vulkan shapes/*-cuda --batches 1 8 32 --prefills 512 2048 --repeats 20 \
  --out "${OUT:-/tmp}/h200_vulkan_smollm2.json" 2>&1 | grep -v "XDG_RUNTIME_DIR\|Warning"
