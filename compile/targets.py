"""The compile targets: one row of ``TARGETS`` per kind holds everything that differs between them.

A row names the TVM target factory, the Relax pass list (``compile/pipelines.py``), the runtime
device type the library's code runs on (recorded in the manifest; the runtime's device entries
are in ``runtime/tvm_env.py``), the default quantization, whether it is a GPU, and the packager
that builds its device code ahead of time (``compile/device_code.py``). Builders and
``compile/build.py`` read the row and never branch on the target's name.

CPU builds target the host's x86-64 micro-architecture level (v2/v3/v4) so vector code uses what
the machine has; the manifest lists the CPU flags that level needs and the runtime refuses to
load the library on a CPU without them. CUDA builds name the architectures whose machine code
goes into the fatbin: the one given (``ARCH=``), the detected GPU's, or sm_80 + sm_89 + sm_90a
when there is no GPU to ask. CUDA host code targets x86-64-v2 so it runs on any serving host.
The vulkan target (also called ``webgpu``) is TVM's WebGPU codegen: WGSL kernels that Ferrum's
runtime plugin runs over wgpu-native on Vulkan (``runtime/webgpu/``); its host code targets
x86-64-v2 too. WebGPU binds each kernel argument as one storage buffer of at most the adapter's
``maxStorageBufferBindingSize``: vulkan builds split larger parameters into row shards under a
compile-time limit (``BINDING_LIMIT``, 128 MiB by default, what browsers and lavapipe offer;
``compile/model/split.py``) and the manifest records it as a limit the adapter must have.
"""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tvm
from tvm import relax

from compile.device_code import cuda_fatbins, webgpu_runtime
from compile.pipelines import cpu_passes, cuda_passes, webgpu_passes
from ferrum.errors import InvalidRequestError
from ferrum.manifest import TargetInfo, host_cpu_flags

X86_LEVELS = {
    "x86-64-v4": ["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx2", "fma", "bmi2", "f16c", "movbe"],
    "x86-64-v3": ["avx2", "fma", "bmi2", "f16c", "movbe"],
    "x86-64-v2": ["sse4_2", "popcnt", "ssse3"],
}
CUDA_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90", "sm_90a")
DEFAULT_CUDA_ARCHS = ("sm_80", "sm_89", "sm_90a")
AUTO = (None, "", "auto")
ALIASES = {"webgpu": "vulkan"}  # TVM's name for the codegen the vulkan target uses
DEFAULT_BINDING_LIMIT = 128 << 20  # WebGPU's default maxStorageBufferBindingSize (browsers, lavapipe)


@dataclass(frozen=True)
class TargetOutput:
    """What a target factory makes of the requested architecture."""

    tvm_target: tvm.target.Target
    triple: str
    cpu_features: tuple[str, ...] = ()
    archs: tuple[str, ...] = ()  # device architectures whose machine code the library carries


Packager = Callable[[relax.VMExecutable, "BuildTarget", Path, Callable[[str], None]], dict[str, str]]


@dataclass(frozen=True)
class TargetKind:
    """One compile target (a row of ``TARGETS``)."""

    name: str
    device_type: str  # the runtime device the library's code runs on
    default_quantization: str
    gpu: bool  # device code runs on a GPU (GPU layouts, TVM's GPU attention grids)
    make: Callable[[str | None], TargetOutput]  # ARCH (None: the default) -> the TVM target
    passes: Callable[[tvm.target.Target], list[tvm.transform.Pass]]  # the Relax pipeline's passes
    package: Packager | None = None  # builds the device code ahead of time; None: it is in the library
    not_yet: tuple[str, ...] = ()  # source architectures this target does not build yet
    # bytes one kernel argument may bind (None: no such limit); larger parameters are split
    binding_limit: int | None = None


@dataclass(frozen=True)
class BuildTarget:
    """A resolved target: the TVM target, its row of ``TARGETS``, and what the manifest records."""

    tvm_target: tvm.target.Target
    kind: TargetKind
    info: TargetInfo
    archs: tuple[str, ...] = ()
    binding_limit: int | None = None  # the kind's, or the one the compile asked for

    @property
    def tag(self) -> str:
        return self.kind.name


def _host_x86_level() -> str:
    flags = host_cpu_flags()
    for level, needed in X86_LEVELS.items():
        if set(needed) <= flags:
            return level
    return "x86-64"


def _host_llvm(level: str | None = None) -> tuple[dict, str, tuple[str, ...]]:
    """The LLVM target of this host (at ``level`` on x86-64), its triple and the CPU flags it needs."""
    machine = platform.machine()
    if machine in ("x86_64", "AMD64"):
        mcpu = level or _host_x86_level()
        triple = "x86_64-linux-gnu"
        return {"kind": "llvm", "mtriple": triple, "mcpu": mcpu}, triple, tuple(X86_LEVELS.get(mcpu, []))
    if machine in ("aarch64", "arm64"):
        triple = "aarch64-linux-gnu"
        return {"kind": "llvm", "mtriple": triple}, triple, ()
    raise InvalidRequestError(f"unsupported host architecture {machine!r}")


def detect_cuda_arch() -> str | None:
    """Compute capability of GPU 0 as ``sm_XY`` via nvidia-smi, or None without a GPU."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    arch = "sm_" + out[0].replace(".", "")
    return "sm_90a" if arch == "sm_90" else arch


def detect_vulkan_gpu() -> bool:
    """True when wgpu-native finds a Vulkan GPU; a CPU driver such as lavapipe does not count."""
    try:
        import wgpu

        adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    except Exception:  # no wgpu, no loader, no driver: wgpu raises several error types
        return False
    return (adapter is not None and adapter.info["backend_type"] == "Vulkan"
            and adapter.info["adapter_type"] in ("DiscreteGPU", "IntegratedGPU"))


def _make_llvm(arch: str | None) -> TargetOutput:
    if arch:
        raise InvalidRequestError("ARCH applies to GPU targets only", param="arch")
    target, triple, features = _host_llvm()
    return TargetOutput(tvm.target.Target(target), triple, features)


def _make_cuda(arch: str | None) -> TargetOutput:
    if arch and arch not in CUDA_ARCHS:
        raise InvalidRequestError(f"unknown CUDA arch {arch!r}; choose one of {', '.join(CUDA_ARCHS)}", param="arch")
    detected = None if arch else detect_cuda_arch()
    archs = (arch,) if arch else (detected,) if detected else DEFAULT_CUDA_ARCHS
    host, triple, features = _host_llvm("x86-64-v2") if platform.machine() == "x86_64" else _host_llvm()
    target = tvm.target.Target(
        {
            "kind": "cuda",
            "arch": min(archs),  # kernels use only features every listed GPU has
            "max_threads_per_block": 1024,
            "max_shared_memory_per_block": 49152,
            "thread_warp_size": 32,
        },
        host=host,
    )
    return TargetOutput(target, triple, features, archs)


def _make_webgpu(arch: str | None) -> TargetOutput:
    if arch:
        raise InvalidRequestError("ARCH does not apply to the vulkan target (kernels are WGSL)", param="arch")
    host, triple, features = _host_llvm("x86-64-v2") if platform.machine() == "x86_64" else _host_llvm()
    return TargetOutput(tvm.target.Target("webgpu", host=host), triple, features)


TARGETS: dict[str, TargetKind] = {
    "llvm": TargetKind("llvm", device_type="cpu", default_quantization="q0f32", gpu=False,
                       make=_make_llvm, passes=cpu_passes),
    "cuda": TargetKind("cuda", device_type="cuda", default_quantization="q0f16", gpu=True,
                       make=_make_cuda, passes=cuda_passes, package=cuda_fatbins),
    "vulkan": TargetKind("vulkan", device_type="webgpu", default_quantization="q0f32", gpu=True,
                         make=_make_webgpu, passes=webgpu_passes, package=webgpu_runtime,
                         not_yet=("whisper", "piper-vits"), binding_limit=DEFAULT_BINDING_LIMIT),
}


def get_target_kind(name: str) -> TargetKind:
    try:
        return TARGETS[ALIASES.get(name, name)]
    except KeyError:
        raise InvalidRequestError(
            f"unknown target {name!r}; choose one of {', '.join([*TARGETS, *ALIASES])}", param="target"
        ) from None


def resolve_target(kind: str | None, arch: str | None = None, binding_limit: int | None = None) -> BuildTarget:
    """``kind``: a name in ``TARGETS``, or None/"auto" (a CUDA GPU, else a Vulkan GPU, else this CPU).
    ``binding_limit``: bytes a kernel argument may bind, for targets that have such a limit."""
    if kind in AUTO:
        kind = "cuda" if detect_cuda_arch() else "vulkan" if detect_vulkan_gpu() else "llvm"
    row = get_target_kind(kind)
    if binding_limit is not None and (row.binding_limit is None or binding_limit < 1024):
        raise InvalidRequestError("a storage-binding limit applies to the vulkan target only, and is at least 1 KiB"
                                  if row.binding_limit is None else "the storage-binding limit must be at least 1 KiB",
                                  param="max_binding")
    made = row.make(arch)
    info = TargetInfo(kind=row.name, triple=made.triple, arch=",".join(made.archs) or None,
                      cpu_features=list(made.cpu_features), device_type=row.device_type)
    return BuildTarget(made.tvm_target, row, info, made.archs, binding_limit or row.binding_limit)
