"""One builder per architecture: turns a model source into an artifact's files.

A builder writes the library (through ``compile.build.build_library``, which handles every
target), weights and whatever its runtime needs (tokenizer, configs) into the staging folder and
returns what the manifest records about them; ``compile/compile_model.py`` does everything common
(target, staging, hashing, manifest, atomic rename). Builders are imported only when used, so
compiling one architecture never imports another's code. Every decoder LLM architecture
registered in ``compile/model/architectures.py`` builds with the decoder builder.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from compile.model.architectures import ARCHITECTURES
from compile.targets import BuildTarget, TargetKind
from ferrum.errors import ModelSourceError
from ferrum.manifest_extra import ModalityExtra
from ferrum.quantization import QuantSpec


@dataclass
class BuildOutput:
    """What a builder made, as the manifest records it."""

    modality: str
    architecture: str
    model: dict[str, Any]
    functions: list[str]
    extra: ModalityExtra  # the modality's typed manifest extra (ferrum/manifest_extra.py)
    kernels: dict[str, str] = field(default_factory=dict)
    cpu_features: list[str] = field(default_factory=list)  # CPU flags the library needs beyond the target's


@dataclass(frozen=True)
class Builder:
    """``build(source, quant, target, staging, progress) -> BuildOutput``, plus the schemes it takes."""

    build: Callable[..., BuildOutput]
    quantizations: tuple[str, ...]  # the first is the default where the target's default is not among them
    # a scheme this builder prefers for a source on a target (None: no preference)
    prefer: Callable[[Any, TargetKind], str | None] | None = None

    def default_quantization(self, target: TargetKind, source: Any = None) -> str:
        """The builder's preference for this source and target, else the target's default scheme
        if this builder takes it, else the builder's first."""
        preferred = self.prefer(source, target) if self.prefer and source is not None else None
        if preferred:
            return preferred
        return target.default_quantization if target.default_quantization in self.quantizations else self.quantizations[0]


DECODER_BUILDER = "compile.builders.decoder:BUILDER"
# the other architectures → "module:attribute" holding a Builder
BUILDERS = {
    "whisper": "compile.builders.whisper:BUILDER",
    "piper-vits": "compile.builders.tts:BUILDER",
    "bert": "compile.builders.bert:BUILDER",
}


def get_builder(architecture: str) -> Builder:
    spec = DECODER_BUILDER if architecture in ARCHITECTURES else BUILDERS.get(architecture)
    if spec is None:
        raise ModelSourceError(
            f"no compile path for architecture {architecture!r}; "
            f"Ferrum compiles {', '.join(sorted([*ARCHITECTURES, *BUILDERS]))}"
        )
    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


def check_quantization(builder: Builder, quant: QuantSpec, architecture: str) -> None:
    if quant.name not in builder.quantizations:
        raise ModelSourceError(
            f"quantization {quant.name} is not available for {architecture} models "
            f"(choose {', '.join(builder.quantizations)})"
        )


__all__ = ["BuildOutput", "BuildTarget", "Builder", "check_quantization", "get_builder"]
