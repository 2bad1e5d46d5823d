"""Builder for Llama-family LLMs (GGUF or Hugging Face sources)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

from tvm import relax

from compile.build import build_fatbins, compile_library, export_module
from compile.builders import LIBRARY_NAME, Builder, BuildOutput
from compile.kernels.build import link_options
from compile.kernels.ops import CudaKernels, install_attention_kernels
from compile.model.attention_grid import prefill_attention_grid
from compile.model.llama import EXPORTED_FUNCTIONS, SAMPLER_FUNCTIONS, LlamaForCausalLM
from compile.sources.base import LlamaSource
from compile.targets import BuildTarget
from compile.tensor_cache import write_tensor_cache
from compile.weights import convert_weights
from ferrum.errors import FerrumError
from ferrum.manifest_extra import LlmExtra
from ferrum.model_config import LlamaConfig
from ferrum.quantization import QuantSpec

# Largest batch a decode step may have: CUDA builds plan decode memory for it (CUDA graphs).
DECODE_GRAPH_MAX_BATCH = 256


def build_llama(
    source: LlamaSource, quant: QuantSpec, target: BuildTarget, staging: Path, progress: Callable[[str], None]
) -> BuildOutput:
    cfg = source.config
    progress(
        f"{source.name}: llama, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
        f"vocab {cfg.vocab_size}; {quant.name} for {target.info.kind} {target.info.arch or ''}".rstrip()
    )
    executable, param_names, functions, extra = compile_llama(cfg, quant, target, staging / LIBRARY_NAME, progress)
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
        functions=functions,
        kernels=kernels,
        extra=LlmExtra(param_names=param_names, **extra),
    )


def uses_cuda_kernels(cfg: LlamaConfig, quant: QuantSpec, target: BuildTarget) -> bool:
    """Ferrum's CUDA kernels take float16 activations (every CUDA build but q0f32), input widths
    that are multiples of 32, output widths that are multiples of 8, and head dims of 64 or 128;
    other models build with TVM's kernels alone."""
    widths = (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads * cfg.head_dim)
    return (target.info.kind == "cuda" and quant.model_dtype == "float16" and cfg.head_dim in (64, 128)
            and all(w % 32 == 0 for w in widths) and cfg.vocab_size % 8 == 0
            and (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim % 8 == 0)


def plain_rope(cfg: LlamaConfig) -> tuple[float, float] | None:
    """(theta, position scale) when the model's RoPE is the default rotate-half over the whole head
    (what Ferrum's split-rotary kernel computes); None for scaled variants (llama3, YaRN, ...)."""
    return (cfg.rope_theta, 1.0) if not cfg.rope_scaling else None


def compile_llama(
    cfg: LlamaConfig, quant: QuantSpec, target: BuildTarget, library: Path, progress: Callable[[str], None]
) -> tuple[relax.VMExecutable, list[str], list[str], dict]:
    """Export and compile the network (no weights): the executable, parameter names, exported
    functions and what the manifest's ``extra`` records about the library."""
    kernels = CudaKernels(target.cuda_archs, rope=plain_rope(cfg)) if uses_cuda_kernels(cfg, quant, target) else None
    functions = list(EXPORTED_FUNCTIONS) + (list(SAMPLER_FUNCTIONS) if kernels else [])
    grid = prefill_attention_grid() if target.info.kind == "cuda" else contextlib.nullcontext()
    with grid:
        mod, param_names = export_module(LlamaForCausalLM(cfg, quant, target.tvm_target, kernels))
    if kernels is not None:
        mod = install_attention_kernels(mod, kernels)
    progress(f"lowering and compiling {len(functions)} functions"
             + (" with Ferrum's CUDA kernels and decode CUDA graphs" if kernels else ""))
    if kernels is None:
        return compile_library(mod, target, library), param_names, functions, {}
    executable = compile_library(mod, target, library, graph_bounds={"batch_decode": {"b": DECODE_GRAPH_MAX_BATCH}},
                                 link_extra=link_options())
    return executable, param_names, functions, {"decode_max_batch": DECODE_GRAPH_MAX_BATCH}


BUILDER = Builder(
    build=build_llama,
    quantizations=("q0f32", "q0f16", "q4f16"),
    default_quantization=lambda kind: "q0f32" if kind == "llvm" else "q0f16",
)
