"""Builder for decoder LLMs (GGUF or Hugging Face sources) of every architecture in
``compile/model/architectures.py``: the network and weight plan come from the architecture's
entry, everything target-specific from ``compile.build.build_library``."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from compile.build import Library, build_library, export_module
from compile.builders import Builder, BuildOutput
from compile.kernels.block_gate import qkv_extras_used
from compile.kernels.build import link_options
from compile.kernels.cpu_ops import CPU_KERNEL_FEATURES, CpuKernels, cpu_kernel_blockers
from compile.kernels.ops import SAMPLER_FUNCTIONS, CudaKernels, install_attention_kernels, kernel_blockers
from compile.model.architectures import get_architecture
from compile.model.attention_grid import prefill_attention_grid
from compile.model.cpu_attention import TVM_DECODE_KERNEL, install_cpu_decode_attention
from compile.model.sliding_window import install_sliding_window
from compile.model.softcap import install_attention_soft_cap
from compile.model.split import split_oversized
from compile.reshard import Layout, reshard
from compile.sources.base import DecoderSource
from compile.targets import BuildTarget, TargetKind
from compile.tensor_cache import write_tensor_cache
from compile.weights import convert_weights
from ferrum.errors import FerrumError, ModelSourceError
from ferrum.manifest import LLM_FUNCTIONS, host_cpu_flags
from ferrum.manifest_extra import LlmExtra
from ferrum.model_config import DecoderConfig
from ferrum.quantization import QuantSpec, get_quantization

# Largest batch a decode step may have: CUDA builds plan decode memory for it (CUDA graphs).
DECODE_GRAPH_MAX_BATCH = 256


@dataclass
class CompiledDecoder:
    """The library of a decoder network (no weights yet) and what the manifest records about it."""

    library: Library
    param_names: list[str]
    functions: list[str]
    extra: dict
    cpu_features: list[str] = field(default_factory=list)  # CPU flags its kernels need beyond the target's
    layout: Layout = field(default_factory=dict)  # parameters split under the binding limit (compile/model/split.py)


def build_decoder(
    source: DecoderSource, quant: QuantSpec, target: BuildTarget, staging: Path, progress: Callable[[str], None]
) -> BuildOutput:
    cfg = source.config
    if quant.interleave and target.kind.gpu:
        raise ModelSourceError(f"{quant.name} lays weights out for CPU kernels; build {target.info.kind} with q4f16")
    progress(
        f"{source.name}: {cfg.architecture}, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
        f"vocab {cfg.vocab_size}; {quant.name} for {target.info.kind} {target.info.arch or ''}".rstrip()
    )
    compiled = compile_decoder(cfg, quant, target, staging, progress)
    total = len(compiled.param_names)

    def report(name: str, i: int) -> None:
        if i % 40 == 0 or i == total:
            progress(f"weights {i}/{total} {name}")

    weights = convert_weights(source, quant)
    if compiled.layout:
        weights = reshard(weights, compiled.param_names, compiled.layout)
    written = write_tensor_cache(weights, staging / "weights", progress=report)
    if written != compiled.param_names:
        raise FerrumError("internal error: converted weights do not match the compiled model's parameters")
    (staging / "tokenizer.json").write_text(source.tokenizer_json)
    (staging / "generation.json").write_text(json.dumps(source.generation.to_dict(), indent=2))
    return BuildOutput(
        modality="llm",
        architecture=cfg.architecture,
        model=cfg.to_dict(),
        functions=compiled.functions,
        kernels=compiled.library.kernels,
        extra=LlmExtra(param_names=compiled.param_names, param_splits=splits_record(compiled.layout),
                       **compiled.extra),
        cpu_features=compiled.cpu_features,
    )


def splits_record(layout: Layout) -> dict[str, list] | None:
    """The manifest's ``extra.param_splits`` (None when nothing was split)."""
    return {name: list(cut) for name, cut in layout.items()} or None


def uses_cuda_kernels(cfg: DecoderConfig, quant: QuantSpec, target: BuildTarget) -> bool:
    """Ferrum's CUDA kernels run the blocks of CUDA builds whose config they take (see
    ``kernel_blockers``); other models build with TVM's kernels alone."""
    return target.kind.name == "cuda" and not kernel_blockers(cfg, quant)


def uses_cpu_kernels(cfg: DecoderConfig, quant: QuantSpec, target: BuildTarget) -> bool:
    """Ferrum's CPU kernels run the blocks of q4f32 builds on CPUs that have AVX-512 VNNI (see
    ``cpu_kernel_blockers``); other CPU builds use TVM's kernels with Ferrum's schedules."""
    return target.kind.name == "llvm" and not cpu_kernel_blockers(cfg, quant, host_cpu_flags())


def plain_rope(cfg: DecoderConfig) -> tuple[float, float] | None:
    """(theta, position scale) when the model's RoPE is the default rotate-half over the whole head
    (what Ferrum's split-rotary kernel computes); None for scaled variants (llama3, YaRN, ...)."""
    return (cfg.rope_theta, 1.0) if not cfg.rope_scaling else None


def build_network(cfg: DecoderConfig, quant: QuantSpec, target: BuildTarget, kernels=None):
    """The architecture's network for this target, with parameters over the target's binding limit
    split into shards, and their layout (empty when nothing was split)."""
    network = get_architecture(cfg.architecture).network_class()(cfg, quant, target.tvm_target, kernels)
    layout = split_oversized(network, target.binding_limit) if target.binding_limit else {}
    return network, layout


def compile_decoder(
    cfg: DecoderConfig, quant: QuantSpec, target: BuildTarget, staging: Path, progress: Callable[[str], None]
) -> CompiledDecoder:
    """Export and compile the network (no weights) into ``staging``."""
    kernels = None
    if uses_cuda_kernels(cfg, quant, target):
        kernels = CudaKernels(target.archs, rope=plain_rope(cfg))
        extras = qkv_extras_used(cfg)
        progress("building the blocks with Ferrum's CUDA kernels"
                 + (f" (TVM's between QKV and attention: {' and '.join(extras)})" if extras else ""))
    elif uses_cpu_kernels(cfg, quant, target):
        kernels = CpuKernels()
    elif target.kind.name == "cuda":
        progress(f"Ferrum's CUDA kernels cannot take this model ({'; '.join(kernel_blockers(cfg, quant))}): "
                 "building with TVM's kernels")
    elif quant.name == "q4f32":
        progress(f"Ferrum's CPU kernels cannot take this model "
                 f"({'; '.join(cpu_kernel_blockers(cfg, quant, host_cpu_flags()))}): building with TVM's kernels")
    cuda = kernels is not None and target.kind.gpu
    functions = list(LLM_FUNCTIONS) + (list(SAMPLER_FUNCTIONS) if cuda else [])
    with prefill_attention_grid() if target.kind.gpu else contextlib.nullcontext():
        network, layout = build_network(cfg, quant, target, kernels)
        if layout:
            progress(f"split {len({src for src, _, _ in layout.values()})} parameters over "
                     f"{target.binding_limit} bytes into {len(layout)} row shards")
        mod, param_names = export_module(network)
    if kernels is not None:
        mod = install_attention_kernels(mod, kernels)
    own_decode = kernels is None and not target.kind.gpu
    if own_decode:
        mod = install_cpu_decode_attention(mod, cfg.num_key_value_heads, cfg.num_attention_heads, cfg.head_dim,
                                           quant.model_dtype, soft_cap=cfg.attn_logit_softcap, window=cfg.sliding_window)
    if cfg.attn_logit_softcap:
        mod = install_attention_soft_cap(mod, cfg.attn_logit_softcap, capped={TVM_DECODE_KERNEL} if own_decode else set())
    if cfg.sliding_window:  # after the cap, whose statements it matches by their scale
        mod = install_sliding_window(mod, cfg.sliding_window, windowed={TVM_DECODE_KERNEL} if own_decode else set())
    progress(f"lowering and compiling {len(functions)} functions"
             + (" with Ferrum's CUDA kernels and decode CUDA graphs" if cuda else
                " with Ferrum's CPU kernels" if kernels else ""))
    if not cuda:
        return CompiledDecoder(build_library(mod, target, staging, progress), param_names, functions, {},
                               list(CPU_KERNEL_FEATURES) if kernels else [], layout)
    library = build_library(mod, target, staging, progress, graph_bounds={"batch_decode": {"b": DECODE_GRAPH_MAX_BATCH}},
                            link_extra=link_options())
    return CompiledDecoder(library, param_names, functions, {"decode_max_batch": DECODE_GRAPH_MAX_BATCH}, layout=layout)


def preferred_quantization(source: DecoderSource, target: TargetKind) -> str | None:
    """q4f32 for CPU builds of int4 GGUFs (SmolLM2's Q4_1, ``make run``'s default) where Ferrum's
    CPU kernels run: it keeps the file's blocks, its greedy tokens equal q0f32's and it decodes
    several times faster (``bench/cpu_bench.py``). Elsewhere the target's default."""
    if target.name != "llvm" or not source.int4_weights:
        return None
    q4 = get_quantization("q4f32")
    return q4.name if not cpu_kernel_blockers(source.config, q4, host_cpu_flags()) else None


BUILDER = Builder(build=build_decoder, quantizations=("q0f32", "q0f16", "q4f16", "q4f32"), prefer=preferred_quantization)
