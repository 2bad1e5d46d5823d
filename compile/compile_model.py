"""The compile stage end to end: model source → TVM library + weights → artifact folder.

Everything is written into a hidden temporary folder next to the destination and renamed into
place only when complete, so a failed or interrupted compile never leaves a half artifact under
the real name.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import tvm

import ferrum
from compile.build import build_fatbins, compile_library, export_module
from compile.model.llama import EXPORTED_FUNCTIONS, LlamaForCausalLM
from compile.sources import open_source
from compile.targets import resolve_target
from compile.tensor_cache import write_tensor_cache
from compile.weights import convert_weights
from ferrum.errors import ArtifactError, FerrumError
from ferrum.manifest import Manifest, describe_files, verify_files
from ferrum.quantization import get_quantization

LIBRARY_NAME = "model.so"


class Progress:
    """Stage lines with elapsed time on stderr (stdout stays clean for the artifact path)."""

    def __init__(self) -> None:
        self.start = time.time()

    def __call__(self, message: str) -> None:
        print(f"[{time.time() - self.start:6.1f}s] {message}", file=sys.stderr, flush=True)


def default_quantization(target_kind: str) -> str:
    return "q0f32" if target_kind == "llvm" else "q0f16"


def compile_model(
    model: str | None,
    target: str | None = None,
    quantization: str | None = None,
    arch: str | None = None,
    output_root: Path = Path("artifacts"),
    name: str | None = None,
    skip_existing: bool = False,
) -> Path:
    """Build an artifact and return its folder (or, with ``skip_existing``, return an intact
    artifact of the same name without rebuilding it)."""
    progress = Progress()
    build_target = resolve_target(target, arch)
    quant = get_quantization(quantization or default_quantization(build_target.info.kind))
    progress(f"reading model {model or '(default)'}")
    source = open_source(model)
    cfg = source.config
    progress(
        f"{source.name}: llama, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
        f"vocab {cfg.vocab_size}; {quant.name} for {build_target.info.kind} {build_target.info.arch or ''}".rstrip()
    )
    name = name or f"{source.name}-{quant.name}-{build_target.tag}"
    final = Path(output_root) / name
    if skip_existing and _intact(final):
        progress(f"already compiled: {final}")
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        module = LlamaForCausalLM(cfg, quant, build_target.tvm_target)
        mod, param_names = export_module(module)
        progress(f"lowering and compiling {len(EXPORTED_FUNCTIONS)} functions with TVM {tvm.__version__}")
        executable = compile_library(mod, build_target, staging / LIBRARY_NAME)
        kernels = {}
        if build_target.info.kind == "cuda":
            kernels = build_fatbins(executable, build_target.cuda_archs, staging / "kernels", progress)

        total = len(param_names)
        written = write_tensor_cache(
            convert_weights(source, quant),
            staging / "weights",
            progress=lambda pname, i: progress(f"weights {i}/{total} {pname}") if i % 40 == 0 or i == total else None,
        )
        if written != param_names:
            raise FerrumError("internal error: converted weights do not match the compiled model's parameters")
        (staging / "tokenizer.json").write_text(source.tokenizer_json)
        (staging / "generation.json").write_text(json.dumps(source.generation.to_dict(), indent=2))

        progress("hashing files and writing manifest")
        Manifest(
            name=name,
            modality="llm",
            architecture=cfg.architecture,
            model=cfg.to_dict(),
            quantization=quant.to_dict(),
            target=build_target.info,
            tvm_version=tvm.__version__,
            ferrum_version=ferrum.__version__,
            source=source.describe(),
            library=LIBRARY_NAME,
            functions=list(EXPORTED_FUNCTIONS),
            files=describe_files(staging),
            kernels=kernels,
            extra={"param_names": param_names},
            created_at=datetime.now(timezone.utc).isoformat(),
        ).write(staging)
        _replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    progress(f"artifact ready: {final}")
    return final


def _intact(folder: Path) -> bool:
    try:
        verify_files(folder, Manifest.load(folder))
    except ArtifactError:
        return False
    return True


def _replace(staging: Path, final: Path) -> None:
    """Move the finished artifact into place, replacing an older build of the same name."""
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
