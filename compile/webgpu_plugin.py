"""Build Ferrum's WebGPU runtime plugin (``runtime/webgpu/ferrum_webgpu.cc``) with the host's C++ compiler.

The plugin is compiled at compile time against the TVM wheel's ``tvm/include`` and ``tvm_ffi``
headers and the ``wgpu`` package's ``webgpu.h``, and shipped in the artifact beside the library
(``runtime/tvm_env.py`` loads it), so the serving box needs no compiler. It links against
``libtvm_runtime`` and ``libtvm_ffi`` (already loaded by ``import tvm``) and leaves wgpu-native's
symbols to the global scope: wgpu's library has no SONAME to link by, so the runtime loads it first
with ``RTLD_GLOBAL`` from wherever the ``wgpu`` package put it. Builds are cached under
``build/webgpu`` keyed by the source, the headers' versions and the flags.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import tvm
import tvm_ffi

from compile.cxx import compile_cxx
from ferrum.errors import FerrumError

SOURCE = Path(__file__).resolve().parents[1] / "runtime" / "webgpu" / "ferrum_webgpu.cc"
CACHE_DIR = Path(__file__).resolve().parents[1] / "build" / "webgpu"


def wgpu_resources() -> Path:
    """The ``wgpu`` package's folder holding wgpu-native's library and headers."""
    spec = importlib.util.find_spec("wgpu")
    if spec is None or not spec.submodule_search_locations:
        raise FerrumError("the vulkan target needs the `wgpu` package (pip install wgpu==0.32.0)")
    return Path(next(iter(spec.submodule_search_locations))) / "resources"


def source_digest() -> str:
    """sha256 of the plugin source (the manifest's key for the plugin file)."""
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()


def build_plugin() -> Path:
    """The plugin shared library for this TVM wheel and wgpu package (cached)."""
    tvm_dir = Path(tvm.__file__).resolve().parent
    ffi_lib = Path(tvm_ffi.libinfo.find_libtvm_ffi()).resolve()
    resources = wgpu_resources()
    flags = ["-shared", "-fPIC", "-O2", "-std=c++17", "-fvisibility=hidden",
             "-I", str(tvm_dir / "include"), "-I", tvm_ffi.libinfo.find_include_path(),
             "-I", tvm_ffi.libinfo.find_dlpack_include_path(), "-I", str(resources)]
    libs = ["-L", str(tvm_dir / "lib"), "-ltvm_runtime", "-L", str(ffi_lib.parent), "-ltvm_ffi"]
    digest = hashlib.sha256(SOURCE.read_bytes())
    for header in ("webgpu.h", "wgpu.h"):
        digest.update((resources / header).read_bytes())
    digest.update(" ".join([tvm.__version__, tvm_ffi.__version__, *flags[:5]]).encode())
    out = CACHE_DIR / f"ferrum_webgpu-{digest.hexdigest()[:20]}.so"
    return compile_cxx(out, SOURCE, flags, "the WebGPU runtime plugin", libs)
