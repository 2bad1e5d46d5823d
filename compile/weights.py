"""Turn a source's Hugging Face tensors into the artifact's parameters.

Pure numpy, no TVM: a machine with only the TVM runtime can regenerate an artifact's weights
from the same source and check them against the manifest's hashes.

The plan fuses Q/K/V into ``qkv_proj`` and gate/up into ``gate_up_proj`` (one matmul each, as
the compiled model expects), casts to the model dtype, and quantizes linear and embedding
weights when the scheme asks for it (norm weights always stay in the model dtype).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from compile.quantize import quantize_q4
from compile.sources.base import HF_EMBED, HF_FINAL_NORM, HF_LM_HEAD, LlamaSource, hf_layer_names
from ferrum.errors import ModelSourceError
from ferrum.model_config import LlamaConfig
from ferrum.quantization import QuantSpec


@dataclass(frozen=True)
class WeightPlan:
    """One artifact weight: the HF tensors concatenated (rows) to make it, and its kind."""

    name: str
    sources: tuple[str, ...]
    kind: str  # "linear", "embedding" or "norm"


def llama_plan(cfg: LlamaConfig) -> list[WeightPlan]:
    plan = [WeightPlan("embed_tokens", (HF_EMBED,), "embedding")]
    for i in range(cfg.num_hidden_layers):
        hf, p = hf_layer_names(i), f"layers.{i}"
        plan += [
            WeightPlan(f"{p}.input_layernorm", (hf["input_norm"],), "norm"),
            WeightPlan(f"{p}.self_attn.qkv_proj", (hf["q"], hf["k"], hf["v"]), "linear"),
            WeightPlan(f"{p}.self_attn.o_proj", (hf["o"],), "linear"),
            WeightPlan(f"{p}.post_attention_layernorm", (hf["post_norm"],), "norm"),
            WeightPlan(f"{p}.mlp.gate_up_proj", (hf["gate"], hf["up"]), "linear"),
            WeightPlan(f"{p}.mlp.down_proj", (hf["down"],), "linear"),
        ]
    plan.append(WeightPlan("norm", (HF_FINAL_NORM,), "norm"))
    if not cfg.tie_word_embeddings:
        plan.append(WeightPlan("lm_head", (HF_LM_HEAD,), "linear"))
    return plan


def expected_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Hugging Face tensor shapes implied by the config (catches mismatched checkpoints early)."""
    d, hd = cfg.hidden_size, cfg.head_dim
    shapes = {HF_EMBED: (cfg.vocab_size, d), HF_FINAL_NORM: (d,)}
    if not cfg.tie_word_embeddings:
        shapes[HF_LM_HEAD] = (cfg.vocab_size, d)
    for i in range(cfg.num_hidden_layers):
        hf = hf_layer_names(i)
        shapes.update(
            {
                hf["q"]: (cfg.num_attention_heads * hd, d),
                hf["k"]: (cfg.num_key_value_heads * hd, d),
                hf["v"]: (cfg.num_key_value_heads * hd, d),
                hf["o"]: (d, cfg.num_attention_heads * hd),
                hf["gate"]: (cfg.intermediate_size, d),
                hf["up"]: (cfg.intermediate_size, d),
                hf["down"]: (d, cfg.intermediate_size),
                hf["input_norm"]: (d,),
                hf["post_norm"]: (d,),
            }
        )
    return shapes


def convert_weights(source: LlamaSource, quant: QuantSpec) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (parameter name, array) for every parameter of the compiled model, in plan order."""
    cfg = source.config
    shapes = expected_shapes(cfg)
    available = source.tensor_names()
    missing = sorted(set(shapes) - available)
    if missing:
        raise ModelSourceError(f"{source.path}: {len(missing)} tensors missing, e.g. {missing[0]}")
    for item in llama_plan(cfg):
        parts = []
        for name in item.sources:
            w = source.tensor(name)
            if tuple(w.shape) != shapes[name]:
                raise ModelSourceError(f"{source.path}: {name} has shape {w.shape}, config implies {shapes[name]}")
            parts.append(w)
        w = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        if item.kind == "linear" and item.name != "lm_head" and quant.quantized:  # see layers.Embedding
            packed, scale, low = quantize_q4(w, quant.group_size)
            yield f"{item.name}.q_weight", packed
            yield f"{item.name}.q_scale", scale.astype(quant.model_dtype)
            yield f"{item.name}.q_min", low.astype(quant.model_dtype)
        else:
            yield f"{item.name}.weight", w.astype(quant.model_dtype)
