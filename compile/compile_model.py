"""The compile stage end to end: model source → TVM library + weights → artifact folder.

Everything is written into a hidden temporary folder next to the destination and renamed into
place only when complete, so a failed or interrupted compile never leaves a half artifact under
the real name.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import tvm

import ferrum
from compile.build import LIBRARY_NAME
from compile.builders import check_quantization, get_builder
from compile.compile_index import find_compiled, record_compiled, request_key
from compile.sources import open_source
from compile.targets import resolve_target
from ferrum.errors import ModelSourceError
from ferrum.manifest import Manifest, TargetInfo, describe_files
from ferrum.quantization import get_quantization


class Progress:
    """Stage lines with elapsed time on stderr (stdout stays clean for the artifact path)."""

    def __init__(self) -> None:
        self.start = time.time()

    def __call__(self, message: str) -> None:
        print(f"[{time.time() - self.start:6.1f}s] {message}", file=sys.stderr, flush=True)


def compile_model(
    model: str | None,
    target: str | None = None,
    quantization: str | None = None,
    arch: str | None = None,
    output_root: Path = Path("artifacts"),
    name: str | None = None,
    skip_existing: bool = False,
    binding_limit: int | None = None,
) -> Path:
    """Build an artifact and return its folder. Every finished request is recorded in the output
    folder's compile index (``compile/compile_index.py``); with ``skip_existing`` an intact artifact
    that the index records for this very request (same source files, options, compiler code and
    machine) is returned without rebuilding. An artifact of the same name built by other compiler
    code is rebuilt: its kernels, layouts or defaults may differ. Requests are also recorded with
    their resolved target and quantization, so ``make run`` (defaults) finds what ``make test``
    (``--target llvm``) built after reading the model once, instead of building it again.
    ``binding_limit``: bytes one kernel argument may bind on the vulkan target (default 128 MiB);
    larger parameters are split."""
    progress = Progress()
    given_name = name
    key = request_key(model, target, quantization, arch, name, binding_limit)
    if skip_existing and (found := find_compiled(Path(output_root), key)) is not None:
        progress(f"already compiled: {found}")
        return found
    build_target = resolve_target(target, arch, binding_limit)
    if quantization:
        get_quantization(quantization)  # an unknown name fails before the model is read
    progress(f"reading model {model or '(default)'}")
    source = open_source(model)
    if source.architecture in build_target.kind.not_yet:
        raise ModelSourceError(f"{source.architecture} models are not supported on {build_target.kind.name} yet")
    builder = get_builder(source.architecture)
    quant = get_quantization(quantization or builder.default_quantization(build_target.kind, source),
                             gpu=build_target.kind.gpu)
    check_quantization(builder, quant, source.architecture)
    resolved_key = request_key(model, build_target.kind.name, quant.name, arch, given_name, binding_limit)
    if skip_existing and (found := find_compiled(Path(output_root), resolved_key)) is not None:
        record_compiled(found.parent, key, found)
        progress(f"already compiled: {found}")
        return found
    name = name or f"{source.name}-{quant.name}-{build_target.tag}"
    final = Path(output_root) / name
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        output = builder.build(source, quant, build_target, staging, progress)
        progress("hashing files and writing manifest")
        Manifest(
            name=name,
            modality=output.modality,
            architecture=output.architecture,
            model=output.model,
            quantization=quant.to_dict(),
            target=_with_features(build_target.info, output.cpu_features),
            tvm_version=tvm.__version__,
            ferrum_version=ferrum.__version__,
            source=source.describe(),
            library=LIBRARY_NAME,
            functions=output.functions,
            files=describe_files(staging),
            kernels=output.kernels,
            extra=output.extra,
            created_at=datetime.now(UTC).isoformat(),
        ).write(staging)
        _replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for recorded in {key, resolved_key}:
        record_compiled(final.parent, recorded, final)
    progress(f"artifact ready: {final}")
    return final


def _with_features(info: TargetInfo, extra: list[str]) -> TargetInfo:
    """The target as the manifest records it: its CPU flags plus those the library's own kernels need."""
    return replace(info, cpu_features=[*info.cpu_features, *(f for f in extra if f not in info.cpu_features)])


def _replace(staging: Path, final: Path) -> None:
    """Move the finished artifact into place, replacing an older build of the same name."""
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
