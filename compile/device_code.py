"""Device-code packagers: the compiled library's device modules built ahead of time, per target.

TVM 0.27 stores CUDA kernels in the exported library as source and compiles them when the library
is loaded, through the ``tvm_callback_cuda_compile`` hook (NVRTC by default). A serving box has no
compiler, so every CUDA module's source is compiled here with nvcc into a fatbin for each
requested architecture and stored keyed by the source's sha256; the runtime answers the hook with
those bytes (``runtime/tvm_env.py``). ``compile/targets.py`` names each target's packager; a
packager returns the manifest's ``kernels`` map (source sha256 → file relative to the artifact).
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tvm import relax

from compile.kernels.build import find_nvcc, gencode_flags
from ferrum.errors import FerrumError

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
