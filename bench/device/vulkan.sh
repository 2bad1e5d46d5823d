#!/usr/bin/env bash
# H200 call: SmolLM2-135M shape-only artifacts (bench/compile_shape.py, weights generated there)
# on Vulkan through Ferrum's WebGPU plugin beside our CUDA artifact (bench/vulkan_bench.py), then
# the runtime-only install a Vulkan edge box needs, trimmed, measured and run. One call takes
# ~2 minutes of wall time on the H200 after the start.
#
#   bash bench/device/vulkan.sh DATA TVM_BUNDLE
#
# DATA holds the Vulkan loader's .debs in gl/ (the device tool's README says how to get them;
# NVIDIA's ICD is on the machine), wgpu-native as a `wgpu` package folder (wgpu/resources/*.so,
# taken from the wgpu==0.32.0 wheel) and the artifacts in shapes/: *-cuda, vk-after (the plugin of
# this checkout) and, optionally, vk-before (the same artifact with an older plugin, for an A/B).
# TVM_BUNDLE is the runtime-only TVM (tvm_runtime.tar.gz). Results go to $OUT (or /tmp).
set -u
cd "$(dirname "$0")/../.."
DATA=${1:?DATA folder} BUNDLE=${2:?tvm_runtime.tar.gz}
OUT=${OUT:-/tmp}
for f in "$DATA"/gl/*.deb; do dpkg -x "$f" /; done
ldconfig
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES=$icd
SITE=/tmp/ferrum-vk-site
mkdir -p "$SITE"
[ -f "$SITE/tvm/__init__.py" ] || tar xzf "$BUNDLE" -C "$SITE"
cp -r "$DATA/wgpu" "$SITE/"
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
bench() { python3 bench/vulkan_bench.py "$@" 2>&1 | grep -v "XDG_RUNTIME_DIR\|Warning"; }
S=$DATA/shapes
# 1. the plugin of this checkout beside CUDA, plugin timers off
bench "$S"/vk-after "$S"/*-cuda --batches 1 8 32 --prefills 512 --repeats 20 --out "$OUT/h200_vulkan_smollm2.json"
# 2. the older plugin (a bind group per dispatch), same artifact otherwise; then this one again,
#    to see the spread between processes (batch 1 moved 4-10 ms between runs of one call)
if [ -d "$S/vk-before" ]; then
  bench "$S"/vk-before --batches 1 8 32 --prefills 512 --repeats 20 --out "$OUT/before.json"
  bench "$S"/vk-after --batches 1 8 32 --prefills 512 --repeats 20 --out "$OUT/after2.json"
fi
# 3. where a batch-1 step's host time goes inside the plugin (FERRUM_WEBGPU_PROFILE=1)
FERRUM_WEBGPU_PROFILE=1 bench "$S"/vk-after --batches 1 8 --prefills 512 --repeats 20 --out "$OUT/profile.json"
# 4. the edge install: TVM runtime + tvm_ffi + wgpu-native + our plugin, trimmed of what only a
#    C++ build uses (headers, sources), shared objects stripped
EDGE=/tmp/ferrum-edge
rm -rf "$EDGE" && cp -r "$SITE" "$EDGE"
echo "untrimmed: $(du -sb "$SITE" | cut -f1) bytes (+ plugin $(stat -c %s "$S"/vk-after/kernels/ferrum_webgpu.so))"
rm -rf "$EDGE"/tvm_ffi/{3rdparty,include,src,cython}  # (tvm_ffi's core links libtvm_ffi_testing.so: kept)
find "$EDGE" -name __pycache__ -prune -exec rm -rf {} +
if command -v strip >/dev/null; then find "$EDGE" -name "*.so*" -exec strip --strip-unneeded {} +; else echo "no strip here"; fi
for d in "$EDGE" "$EDGE"/tvm "$EDGE"/tvm_ffi "$EDGE"/wgpu; do du -sb "$d"; done
PYTHONPATH="$EDGE:$PWD" TVM_USE_RUNTIME_LIB=1 bench "$S"/vk-after --batches 1 --prefills 16 --repeats 5 --out "$OUT/edge.json"
