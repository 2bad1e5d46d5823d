"""The TVM runtime as a serving box has it: no compiler, no NVRTC.

``import tvm`` falls back to runtime-only when ``libtvm_compiler.so`` is absent (or when
``TVM_USE_RUNTIME_LIB=1``). This module never imports the compiler packages (``tvm.relax``,
``tvm.tirx``, ``tvm.s_tir``, ``tvm.target``); it loads the CUDA runtime library itself, and
answers TVM's load-time CUDA compile hook with the fatbins the compile stage built, so loading a
CUDA artifact compiles nothing.

``DEVICES`` is the one place that maps the device type an artifact's manifest names
(``target.device_type``, from the compile stage's target table) to what running on it needs:
which runtime libraries and hooks to load, and which check the device must pass (the GPU
architecture the device code was built for).
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import platform
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tvm
import tvm_ffi
from tvm.runtime import Device

from ferrum.errors import ArtifactError
from ferrum.manifest import WEBGPU_PLUGIN, TargetInfo

_cuda_lock = threading.Lock()
_cuda_loaded = False
_prebuilt_kernels: dict[str, Path] = {}
_webgpu_lock = threading.Lock()
_webgpu_libs: list[ctypes.CDLL] = []  # wgpu-native and Ferrum's plugin, loaded once per process


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


def _open_cpu(_index: int) -> Device:
    return tvm.cpu(0)


def _open_cuda(index: int) -> Device:
    _load_cuda_runtime()
    dev = tvm.cuda(index)
    if not dev.exist:
        raise ArtifactError(f"no CUDA device {index} is available on this machine")
    return dev


def _wgpu_native() -> Path:
    spec = importlib.util.find_spec("wgpu")
    if spec is None or not spec.submodule_search_locations:
        raise ArtifactError("a vulkan artifact needs wgpu-native: install `make dist`'s ferrum-wgpu-native wheel "
                            "or pip install wgpu==0.32.0")
    return Path(next(iter(spec.submodule_search_locations))) / "resources" / "libwgpu_native-release.so"


def _load_webgpu_runtime() -> None:
    """Load wgpu-native (global symbols, which the plugin links against) and the artifact's WebGPU
    plugin, which registers ``device_api.webgpu`` and the device-module loader with TVM."""
    with _webgpu_lock:
        if _webgpu_libs:
            return
        plugin = next((p for p in _prebuilt_kernels.values() if p.name == WEBGPU_PLUGIN), None)
        if plugin is None:
            raise ArtifactError(f"the artifact has no WebGPU runtime plugin (kernels/{WEBGPU_PLUGIN}); "
                                "recompile it with `ferrum compile --target vulkan`")
        try:
            _webgpu_libs.append(ctypes.CDLL(str(_wgpu_native()), mode=ctypes.RTLD_GLOBAL))
            _webgpu_libs.append(ctypes.CDLL(str(plugin), mode=ctypes.RTLD_LOCAL))
        except OSError as exc:
            raise ArtifactError(f"cannot load the WebGPU runtime: {exc}") from None


def webgpu_adapter() -> dict:
    """The WebGPU adapter: name, vendor, driver, backend, adapter type, features and limits
    (``{"error": ...}`` without one)."""
    _load_webgpu_runtime()
    return json.loads(tvm.get_global_func("ferrum.webgpu.adapter_info")())


def _describe_webgpu(_dev: Device) -> dict:
    adapter = webgpu_adapter()
    return {"type": "webgpu", **{k: adapter[k] for k in ("name", "vendor", "backend", "adapter_type", "driver")},
            "memory_allocated_bytes": adapter["allocated_bytes"],
            "max_storage_buffer_binding_size": adapter["limits"]["max_storage_buffer_binding_size"]}


def _open_webgpu(index: int) -> Device:
    adapter = webgpu_adapter()
    if "error" in adapter:
        raise ArtifactError(f"no Vulkan device is available on this machine ({adapter['error']})")
    if index != 0:
        raise ArtifactError(f"WebGPU device {index} does not exist: this runtime drives one adapter (0)")
    return tvm.device("webgpu", 0)


def _webgpu_mismatch(_dev: Device, target: TargetInfo) -> str | None:
    """The features and limits the kernels need (``target.requirements``) against the adapter's."""
    needs = target.requirements
    adapter = webgpu_adapter()
    missing = [f for f in needs.get("features", []) if f not in adapter["features"]]
    short = [f"{name} {adapter['limits'].get(name, 0)} < {value}" for name, value in needs.get("limits", {}).items()
             if adapter["limits"].get(name, 0) < value]
    if not missing and not short:
        return None
    return (f"needs a WebGPU adapter with {', '.join(missing + short)}; this one ({adapter['name']}, "
            f"{adapter['backend']}) lacks it")


def cuda_arch(dev: Device) -> str:
    """``sm_XY`` of a CUDA device."""
    return "sm_" + dev.compute_version.replace(".", "")


def _cuda_arch_mismatch(dev: Device, target: TargetInfo) -> str | None:
    arch = cuda_arch(dev)
    built = [a.rstrip("a") for a in (target.arch or "").split(",") if a]
    if arch in built:
        return None
    return f"holds device code for {target.arch}, but this GPU ({dev.device_name}) is {arch}; recompile with ARCH={arch}"


def _describe_cuda(dev: Device) -> dict:
    return {"type": "cuda", "name": dev.device_name, "arch": cuda_arch(dev),
            "memory_total_bytes": dev.total_global_memory,
            "memory_used_bytes": dev.total_global_memory - dev.available_global_memory}


@dataclass(frozen=True)
class RuntimeDevice:
    """What running a library on one device type needs."""

    open: Callable[[int], Device]  # loads the device's runtime libraries and hooks, returns device ``index``
    # why the device cannot run a library built for the target (a predicate phrase), None if it can
    mismatch: Callable[[Device, TargetInfo], str | None] = lambda _dev, _target: None
    # what ``/v1/status`` reports of the device: its name and driver, the memory in use
    describe: Callable[[Device], dict] = lambda _dev: {}


DEVICES: dict[str, RuntimeDevice] = {
    "cpu": RuntimeDevice(open=_open_cpu, describe=lambda _dev: {"type": "cpu", "name": platform.machine()}),
    "cuda": RuntimeDevice(open=_open_cuda, mismatch=_cuda_arch_mismatch, describe=_describe_cuda),
    "webgpu": RuntimeDevice(open=_open_webgpu, mismatch=_webgpu_mismatch, describe=_describe_webgpu),
}


# what users call a device type: the vulkan target's libraries run on TVM's webgpu device
DEVICE_ALIASES = {"vulkan": "webgpu"}


def open_device(artifact: str, target: TargetInfo, index: int = 0) -> Device:
    """Device ``index`` of the type ``target`` runs on, with its runtime loaded and the device
    checked against what artifact ``artifact``'s library was built for (else ``ArtifactError``)."""
    entry = DEVICES.get(target.device_type)
    if entry is None:
        raise ArtifactError(
            f"artifact {artifact} is compiled for {target.kind} ({target.device_type or 'unknown'} devices); "
            f"this runtime runs on {', '.join(DEVICES)}"
        )
    dev = entry.open(index)
    problem = entry.mismatch(dev, target)
    if problem:
        raise ArtifactError(f"artifact {artifact} {problem}")
    return dev


def describe_device(device_type: str, dev: Device) -> dict:
    """The device as ``/v1/status`` reports it (``RuntimeDevice.describe``)."""
    return DEVICES[device_type].describe(dev)


def max_binding_bytes(device_type: str) -> int | None:
    """Largest buffer one kernel argument may be on this device type (WebGPU's storage-binding
    limit; the KV cache's per-layer pages must fit it), None where there is no such limit."""
    if device_type != "webgpu":
        return None
    return int(webgpu_adapter()["limits"]["max_storage_buffer_binding_size"])
