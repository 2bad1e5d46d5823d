"""The TVM runtime as a serving box has it: no compiler, no NVRTC.

``import tvm`` falls back to runtime-only when ``libtvm_compiler.so`` is absent (or when
``TVM_USE_RUNTIME_LIB=1``). This module never imports the compiler packages (``tvm.relax``,
``tvm.tirx``, ``tvm.s_tir``, ``tvm.target``); it loads the CUDA runtime library itself, and
answers TVM's load-time CUDA compile hook with the fatbins the compile stage built, so loading a
CUDA artifact compiles nothing.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import tvm
import tvm_ffi
from tvm.runtime import Device

from ferrum.errors import ArtifactError

_cuda_lock = threading.Lock()
_cuda_loaded = False
_prebuilt_kernels: dict[str, Path] = {}


def runtime_only() -> bool:
    """True when TVM runs without its compiler library (as on a serving box)."""
    return bool(tvm.base._RUNTIME_ONLY)


def _load_cuda_runtime() -> None:
    """Load ``libtvm_runtime_cuda`` (and ``libtvm_runtime_extra``) as ``tvm.backend.cuda`` would."""
    global _cuda_loaded
    with _cuda_lock:
        if _cuda_loaded:
            return
        from tvm.base import _LOADED_LIBS
        from tvm_ffi.libinfo import load_lib_ctypes

        lib_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
        for name in ("tvm_runtime_cuda", "tvm_runtime_extra"):
            if name in _LOADED_LIBS:
                continue
            try:
                _LOADED_LIBS[name] = load_lib_ctypes(
                    package="tvm", target_name=name, extra_lib_paths=[lib_dir], mode="RTLD_LOCAL"
                )
            except (OSError, RuntimeError) as exc:
                if name == "tvm_runtime_cuda":
                    raise ArtifactError(f"cannot load TVM's CUDA runtime (is a CUDA driver installed?): {exc}") from None
        tvm_ffi.register_global_func("tvm_callback_cuda_compile", _prebuilt_fatbin, override=True)
        _cuda_loaded = True


def _prebuilt_fatbin(code: str, *_target: object) -> bytearray:
    digest = hashlib.sha256(code.encode()).hexdigest()
    path = _prebuilt_kernels.get(digest)
    if path is None:
        raise ArtifactError(
            "the artifact has no prebuilt device code for one of its CUDA modules "
            f"(source sha256 {digest[:16]}); recompile it with `ferrum compile --target cuda`"
        )
    return bytearray(path.read_bytes())


def register_kernels(folder: Path, kernels: dict[str, str]) -> None:
    """Make the artifact's fatbins (source sha256 → file) available to the CUDA loader."""
    for digest, rel in kernels.items():
        _prebuilt_kernels[digest] = Path(folder) / rel


def open_device(kind: str, index: int = 0) -> Device:
    """The TVM device for ``cpu`` or ``cuda`` (loading the CUDA runtime on first use)."""
    if kind == "cpu":
        return tvm.cpu(0)
    if kind != "cuda":
        raise ArtifactError(f"unsupported device {kind!r}")
    _load_cuda_runtime()
    dev = tvm.cuda(index)
    if not dev.exist:
        raise ArtifactError(f"no CUDA device {index} is available on this machine")
    return dev


def cuda_arch(dev: Device) -> str:
    """``sm_XY`` of a CUDA device."""
    return "sm_" + dev.compute_version.replace(".", "")
