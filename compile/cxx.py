"""Compile one C++ source with the host's g++ into a cached file, written atomically.

The RoPE glue and CPU kernels (``compile/kernels/``) and the WebGPU runtime plugin
(``compile/webgpu_plugin.py``) are built this way; each caller names the output by a digest of
everything that goes into it, so an existing file is reused as it is.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ferrum.errors import FerrumError


def compile_cxx(out: Path, source: Path, flags: Sequence[str], what: str, libs: Sequence[str] = ()) -> Path:
    """``g++ flags -o out source libs`` unless ``out`` exists; ``what`` names the product in errors."""
    if out.exists():
        return out
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise FerrumError(f"building {what} needs a C++ compiler (g++) on PATH")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / out.name
        run = subprocess.run([cxx, *flags, "-o", str(target), str(source), *libs],
                             capture_output=True, text=True, check=False)
        if run.returncode != 0:
            raise FerrumError(f"compiling {what} failed:\n{run.stderr[-4000:]}")
        partial = out.with_suffix(out.suffix + ".partial")
        shutil.copy(target, partial)
        partial.rename(out)
    return out
