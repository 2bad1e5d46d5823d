"""Builder for text-to-speech voices (Piper's VITS): ``encode`` and ``decode`` plus the text front end."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from compile.build import build_library, export_module
from compile.builders import Builder, BuildOutput
from compile.model.vits import EXPORTED_FUNCTIONS, Vits
from compile.sources.tts_source import PiperVoiceSource
from compile.targets import BuildTarget
from compile.tensor_cache import write_tensor_cache
from ferrum.errors import FerrumError
from ferrum.manifest_extra import TtsExtra
from ferrum.quantization import QuantSpec


def build_piper(
    source: PiperVoiceSource, quant: QuantSpec, target: BuildTarget, staging: Path, progress: Callable[[str], None]
) -> BuildOutput:
    cfg = source.config
    progress(
        f"{source.name}: VITS, {cfg.n_layers} encoder layers, hidden {cfg.hidden}, {cfg.sample_rate} Hz, "
        f"hop {cfg.hop_length}; {quant.name} for {target.info.kind} {target.info.arch or ''}".rstrip()
    )
    mod, param_names = export_module(Vits(cfg))
    progress(f"lowering and compiling {len(EXPORTED_FUNCTIONS)} functions")
    library = build_library(mod, target, staging, progress)
    written = write_tensor_cache(((name, source.tensor(name)) for name in param_names), staging / "weights")
    if written != param_names:
        raise FerrumError("internal error: written weights do not match the compiled model's parameters")
    progress(f"weights: {len(written)} tensors")
    return BuildOutput(
        modality="tts",
        architecture=source.architecture,
        model=cfg.to_dict(),
        functions=list(EXPORTED_FUNCTIONS),
        kernels=library.kernels,
        extra=TtsExtra(param_names=param_names, front_end=source.front_end()),
    )


BUILDER = Builder(build=build_piper, quantizations=("q0f32",))
