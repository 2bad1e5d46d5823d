"""Builder for Llama-family LLMs (GGUF or Hugging Face sources)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from compile.build import build_fatbins, compile_library, export_module
from compile.builders import LIBRARY_NAME, Builder, BuildOutput
from compile.model.llama import EXPORTED_FUNCTIONS, LlamaForCausalLM
from compile.sources.base import LlamaSource
from compile.targets import BuildTarget
from compile.tensor_cache import write_tensor_cache
from compile.weights import convert_weights
from ferrum.errors import FerrumError
from ferrum.quantization import QuantSpec


def build_llama(
    source: LlamaSource, quant: QuantSpec, target: BuildTarget, staging: Path, progress: Callable[[str], None]
) -> BuildOutput:
    cfg = source.config
    progress(
        f"{source.name}: llama, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
        f"vocab {cfg.vocab_size}; {quant.name} for {target.info.kind} {target.info.arch or ''}".rstrip()
    )
    mod, param_names = export_module(LlamaForCausalLM(cfg, quant, target.tvm_target))
    progress(f"lowering and compiling {len(EXPORTED_FUNCTIONS)} functions")
    executable = compile_library(mod, target, staging / LIBRARY_NAME)
    kernels = {}
    if target.info.kind == "cuda":
        kernels = build_fatbins(executable, target.cuda_archs, staging / "kernels", progress)

    total = len(param_names)

    def report(name: str, i: int) -> None:
        if i % 40 == 0 or i == total:
            progress(f"weights {i}/{total} {name}")

    written = write_tensor_cache(convert_weights(source, quant), staging / "weights", progress=report)
    if written != param_names:
        raise FerrumError("internal error: converted weights do not match the compiled model's parameters")
    (staging / "tokenizer.json").write_text(source.tokenizer_json)
    (staging / "generation.json").write_text(json.dumps(source.generation.to_dict(), indent=2))
    return BuildOutput(
        modality="llm",
        architecture=cfg.architecture,
        model=cfg.to_dict(),
        functions=list(EXPORTED_FUNCTIONS),
        kernels=kernels,
        extra={"param_names": param_names},
    )


BUILDER = Builder(
    build=build_llama,
    quantizations=("q0f32", "q0f16", "q4f16"),
    default_quantization=lambda kind: "q0f32" if kind == "llvm" else "q0f16",
)
