"""Choose the TVM target for a build and describe it for the manifest.

CPU builds target the host's x86-64 micro-architecture level (v2/v3/v4) so vector code uses what
the machine has; the manifest lists the CPU flags that level needs and the runtime refuses to
load the library on a CPU without them. CUDA builds name the architectures whose machine code
goes into the fatbin: the one given (``ARCH=``), the detected GPU's, or sm_80 + sm_89 + sm_90a
when there is no GPU to ask. CUDA host code targets x86-64-v2 so it runs on any serving host.
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass

import tvm

from ferrum.errors import InvalidRequestError
from ferrum.manifest import TargetInfo, host_cpu_flags

X86_LEVELS = {
    "x86-64-v4": ["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx2", "fma", "bmi2", "f16c", "movbe"],
    "x86-64-v3": ["avx2", "fma", "bmi2", "f16c", "movbe"],
    "x86-64-v2": ["sse4_2", "popcnt", "ssse3"],
}
CUDA_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90", "sm_90a")
DEFAULT_CUDA_ARCHS = ("sm_80", "sm_89", "sm_90a")


@dataclass
class BuildTarget:
    """A TVM target plus what the manifest records about it."""

    tvm_target: tvm.target.Target
    info: TargetInfo
    cuda_archs: tuple[str, ...] = ()

    @property
    def tag(self) -> str:
        return self.info.kind


def _host_x86_level() -> str:
    flags = host_cpu_flags()
    for level, needed in X86_LEVELS.items():
        if set(needed) <= flags:
            return level
    return "x86-64"


def _host_llvm(level: str | None = None) -> tuple[dict, TargetInfo]:
    machine = platform.machine()
    if machine in ("x86_64", "AMD64"):
        mcpu = level or _host_x86_level()
        triple = "x86_64-linux-gnu"
        info = TargetInfo(kind="llvm", triple=triple, cpu_features=X86_LEVELS.get(mcpu, []))
        return {"kind": "llvm", "mtriple": triple, "mcpu": mcpu}, info
    if machine in ("aarch64", "arm64"):
        triple = "aarch64-linux-gnu"
        return {"kind": "llvm", "mtriple": triple}, TargetInfo(kind="llvm", triple=triple)
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


def resolve_target(kind: str | None, arch: str | None = None) -> BuildTarget:
    """``kind``: ``llvm``, ``cuda`` or None (the detected GPU if any, else this CPU)."""
    detected = detect_cuda_arch() if kind in (None, "", "auto", "cuda") else None
    if kind in (None, "", "auto"):
        kind = "cuda" if detected else "llvm"
    if kind == "llvm":
        if arch:
            raise InvalidRequestError("ARCH applies to CUDA targets only", param="arch")
        target, info = _host_llvm()
        return BuildTarget(tvm.target.Target(target), info)
    if kind != "cuda":
        raise InvalidRequestError(f"unknown target {kind!r}; choose llvm or cuda", param="target")
    if arch and arch not in CUDA_ARCHS:
        raise InvalidRequestError(f"unknown CUDA arch {arch!r}; choose one of {', '.join(CUDA_ARCHS)}", param="arch")
    archs = (arch,) if arch else (detected,) if detected else DEFAULT_CUDA_ARCHS
    host, host_info = _host_llvm("x86-64-v2") if platform.machine() == "x86_64" else _host_llvm()
    codegen_arch = min(archs)  # kernels use only features every listed GPU has
    target = tvm.target.Target(
        {
            "kind": "cuda",
            "arch": codegen_arch,
            "max_threads_per_block": 1024,
            "max_shared_memory_per_block": 49152,
            "thread_warp_size": 32,
        },
        host=host,
    )
    info = TargetInfo(kind="cuda", triple=host_info.triple, arch=",".join(archs), cpu_features=host_info.cpu_features)
    return BuildTarget(target, info, archs)
