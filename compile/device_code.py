"""Device-code packagers: the compiled library's device modules built ahead of time, per target.

TVM 0.27 stores CUDA kernels in the exported library as source and compiles them when the library
is loaded, through the ``tvm_callback_cuda_compile`` hook (NVRTC by default). A serving box has no
compiler, so every CUDA module's source is compiled here with nvcc into a fatbin for each
requested architecture and stored keyed by the source's sha256; the runtime answers the hook with
those bytes (``runtime/tvm_env.py``). WebGPU modules stay WGSL source in the library (wgpu-native
compiles WGSL when a pipeline is made); their packager ships Ferrum's WebGPU runtime plugin beside
it and records in the manifest the adapter features and limits the kernels need.
``compile/targets.py`` names each target's packager; a packager returns the manifest's
``kernels`` map (source sha256 → file relative to the artifact).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tvm import relax

from compile.kernels.build import find_nvcc, gencode_flags
from compile.webgpu_plugin import build_plugin, source_digest
from ferrum.errors import FerrumError
from ferrum.manifest import WEBGPU_PLUGIN

if TYPE_CHECKING:
    from compile.targets import BuildTarget

KERNELS_DIR = "kernels"


def _modules(module) -> Iterator:
    yield module
    for child in module.imports:
        yield from _modules(child)


def module_sources(executable: relax.VMExecutable, kind: str) -> list[str]:
    """Source of every device module of ``kind`` (``cuda``) the executable imports."""
    return [m.inspect_source() for m in _modules(executable.mod) if m.kind == kind]


def cuda_fatbins(
    executable: relax.VMExecutable, target: BuildTarget, staging: Path, progress: Callable[[str], None]
) -> dict[str, str]:
    """nvcc every CUDA module into ``staging/kernels/<sha256>.fatbin`` for the target's architectures."""
    nvcc = find_nvcc()
    folder = staging / KERNELS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    kernels = {}
    for source in module_sources(executable, "cuda"):
        digest = hashlib.sha256(source.encode()).hexdigest()
        out = folder / f"{digest}.fatbin"
        progress(f"nvcc: {source.count('__global__')} kernels for {', '.join(target.archs)}")
        with tempfile.TemporaryDirectory() as tmp:
            cu = Path(tmp) / "kernels.cu"
            cu.write_text(source)
            run = subprocess.run(
                [nvcc, "--fatbin", "-O3", "-std=c++17", *gencode_flags(target.archs), "-o", str(out), str(cu)],
                capture_output=True, text=True, check=False,
            )
        if run.returncode != 0:
            raise FerrumError(f"nvcc failed compiling CUDA kernels:\n{run.stderr[-4000:]}")
        kernels[digest] = f"{KERNELS_DIR}/{out.name}"
    return kernels


_WGSL_BINDING = re.compile(r"var<storage, (read|read_write)>")
_WGSL_WORKGROUP = re.compile(r"@workgroup_size\((\d+)(?:, *(\d+))?(?:, *(\d+))?\)")
_WGSL_SHARED = re.compile(r"var<workgroup> \w+ *: *array<(f16|f32|i32|u32), *(\d+)>")
_WGSL_BYTES = {"f16": 2, "f32": 4, "i32": 4, "u32": 4}


def webgpu_requirements(sources: list[str]) -> dict:
    """What an adapter must offer to run these WGSL modules: features and limits (WebGPU names
    in snake case, as ``ferrum.webgpu.adapter_info`` reports them)."""
    buffers = invocations = shared = 0
    f16 = False
    for source in sources:
        for kernel in source.split("// Function: ")[1:]:
            f16 = f16 or "enable f16;" in kernel
            buffers = max(buffers, len(_WGSL_BINDING.findall(kernel)))
            for dims in _WGSL_WORKGROUP.findall(kernel):
                count = 1
                for d in dims:
                    count *= int(d or 1)
                invocations = max(invocations, count)
            shared = max(shared, sum(_WGSL_BYTES[t] * int(n) for t, n in _WGSL_SHARED.findall(kernel)))
    return {
        "features": ["shader-f16"] if f16 else [],
        "limits": {"max_storage_buffers_per_shader_stage": buffers,
                   "max_compute_invocations_per_workgroup": invocations,
                   "max_compute_workgroup_storage_size": shared},
    }


def webgpu_runtime(
    executable: relax.VMExecutable, target: BuildTarget, staging: Path, progress: Callable[[str], None]
) -> dict[str, str]:
    """Ship the WebGPU runtime plugin in ``staging/kernels/`` and record the adapter requirements."""
    sources = module_sources(executable, "webgpu")
    needs = webgpu_requirements(sources)
    if target.binding_limit:  # parameters were split to fit it (compile/model/split.py)
        needs["limits"]["max_storage_buffer_binding_size"] = target.binding_limit
    target.info.requirements = needs
    progress(f"WebGPU: {sum(s.count('// Function: ') for s in sources)} WGSL kernels; building the runtime plugin")
    folder = staging / KERNELS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(build_plugin(), folder / WEBGPU_PLUGIN)
    return {source_digest(): f"{KERNELS_DIR}/{WEBGPU_PLUGIN}"}
