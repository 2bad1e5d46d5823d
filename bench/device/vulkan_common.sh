# Sourced by the Vulkan device scripts (vulkan_8b.sh, vulkan_8b_gemv.sh): what every Vulkan call carries
# and how the GPU machine installs it.
#   vulkan_pack DIR   (here) the Vulkan loader and GL dispatch .debs NVIDIA's ICD needs (the device
#                     README's recipe), wgpu-native (the `wgpu` package folder) and this checkout's
#                     ferrum/ runtime/ bench/ checks/ as src.tar (the device runs over another
#                     checkout: untar it at the repository root first)
#   vulkan_install DIR  (there) installs them, the runtime-only TVM bundle and DIR/shapes.tar.xz into
#                     /tmp/ferrum-site and /tmp/ferrum-data; sets PYTHONPATH and DATA

vulkan_pack() {
  local dir=$1 py=${PY:-.venv/bin/python} o wgpu
  mkdir -p "$dir/gl" /tmp/amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  apt-get $o update >/dev/null
  (cd "$dir/gl" && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
  wgpu=$("$py" -c "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('wgpu').origin).parent)")
  tar cJf "$dir/wgpu.tar.xz" -C "$(dirname "$wgpu")" --exclude=__pycache__ wgpu
  tar cf "$dir/src.tar" ferrum runtime bench checks
  du -sh "$dir/shapes.tar.xz" "$dir/wgpu.tar.xz" "$dir/src.tar" "$dir/gl"
}

vulkan_install() {
  local dir=$1 f icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  for f in "$dir"/gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  [ -f "$icd" ] && export VK_DRIVER_FILES=$icd
  SITE=/tmp/ferrum-site DATA=/tmp/ferrum-data
  mkdir -p "$SITE" "$DATA"
  [ -f "$SITE/tvm/__init__.py" ] || tar xzf .dev/carry/tvm_runtime.tar.gz -C "$SITE"
  tar xJf "$dir/wgpu.tar.xz" -C "$SITE"
  tar xJf "$dir/shapes.tar.xz" -C "$DATA"
  export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
}
