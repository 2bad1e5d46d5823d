"""Which artifact a compile request produced, so ``--skip-existing`` answers in milliseconds.

Naming the artifact a request would produce means reading the model (the GGUF reader takes
seconds on a 49k-token vocabulary) and resolving the target (importing the TVM compiler).
``make run`` asks that on every start. Instead each finished compile records, in
``<output>/.compile-index.json``, a key for its request → the artifact's name. The key covers
everything the artifact depends on: the model source's identity (path, size, modification time
of each file), the options as given (target, quantization, architecture, name), the compile
stage's own code (every file under ``compile/`` and ``ferrum/``, the TVM version: a change to a
default or a kernel makes a new key), and this machine (its CPU flags and GPUs, which the
default target and the CPU features come from). A key that is not found falls back to the full
check, which records it.

This module imports neither TVM nor the model readers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from importlib import metadata
from pathlib import Path

import ferrum
from compile.sources import resolve_model_path
from ferrum.errors import ArtifactError, FerrumError
from ferrum.manifest import Manifest, host_cpu_flags, verify_files

INDEX_NAME = ".compile-index.json"
_VULKAN_ICD_DIRS = ("/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d")
_CODE_SUFFIXES = {".py", ".cu", ".cuh", ".h", ".cc", ".cpp", ".json"}


def request_key(model: str | None, target: str | None, quantization: str | None, arch: str | None,
                name: str | None, binding_limit: int | None = None) -> str:
    """The key of one compile request (see the module docstring)."""
    parts = {
        "source": _source_identity(resolve_model_path(model)),
        "options": [target, quantization, arch, name, *([binding_limit] if binding_limit else [])],
        "compiler": _compiler_fingerprint(),
        "machine": _machine_fingerprint(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def find_compiled(output_root: Path, key: str) -> Path | None:
    """The intact artifact recorded for ``key``, or None."""
    name = _read(output_root).get(key)
    if not isinstance(name, str):
        return None
    folder = Path(output_root) / name
    try:
        verify_files(folder, Manifest.load(folder))
    except ArtifactError:
        return None
    return folder


def record_compiled(output_root: Path, key: str, folder: Path) -> None:
    """Remember that ``key`` produced ``folder`` (an unwritable output folder only costs speed)."""
    index = _read(output_root)
    index[key] = Path(folder).name
    try:
        fd, tmp = tempfile.mkstemp(dir=output_root, prefix=".compile-index-", suffix=".json")
        with os.fdopen(fd, "w") as handle:
            json.dump(index, handle, indent=1, sort_keys=True)
        os.replace(tmp, Path(output_root) / INDEX_NAME)
    except OSError:
        pass


def quick_skip(model: str | None, target: str | None, quantization: str | None, arch: str | None,
               output_root: Path, name: str | None, binding_limit: int | None = None) -> Path | None:
    """``--skip-existing`` without the compiler: the recorded artifact for this request, if intact."""
    try:
        key = request_key(model, target, quantization, arch, name, binding_limit)
    except FerrumError:
        return None  # e.g. a missing model: the full path says why
    return find_compiled(output_root, key)


def _read(output_root: Path) -> dict:
    try:
        data = json.loads((Path(output_root) / INDEX_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _source_identity(path: Path) -> list:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    identity = []
    for file in files:
        st = file.stat()
        identity.append([str(file.resolve()), st.st_size, st.st_mtime_ns])
    return identity


@functools.cache
def _compiler_fingerprint() -> str:
    """Hashed once per process: a compile asks for it twice (the request as given and as resolved),
    and a test session for every artifact it builds."""
    digest = hashlib.sha256()
    for package in (Path(__file__).parent, Path(ferrum.__file__).parent):
        for file in sorted(package.rglob("*")):
            if file.suffix in _CODE_SUFFIXES and "__pycache__" not in file.parts:
                digest.update(file.relative_to(package.parent).as_posix().encode())
                digest.update(file.read_bytes())
    for dist in ("apache-tvm", "apache-tvm-ffi"):
        try:
            digest.update(f"{dist}={metadata.version(dist)}".encode())
        except metadata.PackageNotFoundError:
            pass
    return digest.hexdigest()


@functools.cache
def _machine_fingerprint() -> tuple:
    """What the default target and the CPU features are read from: the CPU's flags, the GPUs and
    the Vulkan drivers installed."""
    gpus = sorted(str(p) for p in Path("/dev").glob("nvidia[0-9]*"))
    models = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        try:
            models.append(info.read_text())
        except OSError:
            pass
    icds = sorted(p.name for d in _VULKAN_ICD_DIRS for p in Path(d).glob("*.json"))
    return (sorted(host_cpu_flags()), gpus, models, icds)  # json.dumps writes it as the list it was
