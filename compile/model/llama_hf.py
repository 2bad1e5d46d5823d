"""Hugging Face ``LlamaForCausalLM`` checkpoints onto ``compile/model/llama.py``: config and tensors.

Numpy only (see ``compile/model/architectures.py``). GGUF llama files are served under these
names too (``compile/sources/gguf_source.py``), so one plan covers both containers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compile.weights import HFMapping, WeightPlan
from ferrum.errors import ModelSourceError
from ferrum.model_config import DecoderConfig

HF_EMBED = "model.embed_tokens.weight"
HF_FINAL_NORM = "model.norm.weight"
HF_LM_HEAD = "lm_head.weight"
SUPPORTED_ROPE = ("default", "llama3")


def hf_layer_names(layer: int) -> dict[str, str]:
    """The per-layer tensor names of Hugging Face ``LlamaForCausalLM`` (weights, and the biases
    of checkpoints with ``attention_bias``/``mlp_bias``)."""
    p = f"model.layers.{layer}"
    names = {"input_norm": f"{p}.input_layernorm.weight", "post_norm": f"{p}.post_attention_layernorm.weight"}
    for part, module in (("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"),
                         ("o", "self_attn.o_proj"), ("gate", "mlp.gate_proj"), ("up", "mlp.up_proj"),
                         ("down", "mlp.down_proj")):
        names[part] = f"{p}.{module}.weight"
        names[f"{part}_bias"] = f"{p}.{module}.bias"
    return names


def read_config(c: dict[str, Any], folder: Path) -> DecoderConfig:
    """``config.json`` of a ``LlamaForCausalLM`` checkpoint: every key that changes the network is
    read into a field (the network refuses the values it does not implement)."""
    rope_scaling = c.get("rope_scaling") or {}
    rope_type = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE:
        raise ModelSourceError(f"{folder}: RoPE scaling {rope_type!r} is not supported")
    if rope_type == "default":
        rope_scaling = {}
    try:
        heads = c["num_attention_heads"]
        return DecoderConfig(
            vocab_size=c["vocab_size"],
            hidden_size=c["hidden_size"],
            intermediate_size=c["intermediate_size"],
            num_hidden_layers=c["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=c.get("num_key_value_heads") or heads,
            head_dim=c.get("head_dim") or c["hidden_size"] // heads,
            rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
            rope_theta=float(c.get("rope_theta", 10000.0)),
            context_length=int(c.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
            rope_scaling={**rope_scaling, "rope_type": rope_type} if rope_scaling else {},
            qkv_bias=bool(c.get("attention_bias", False)),
            o_bias=bool(c.get("attention_bias", False)),
            mlp_bias=bool(c.get("mlp_bias", False)),
            activation=str(c.get("hidden_act", "silu")),
        )
    except KeyError as exc:
        raise ModelSourceError(f"{folder}/config.json lacks {exc}") from None
    except ValueError as exc:
        raise ModelSourceError(f"{folder}/config.json: {exc}") from None


def plan(cfg: DecoderConfig) -> list[WeightPlan]:
    """Every parameter of ``LlamaForCausalLM`` (compile/model/llama.py) in its call order."""
    d, hd = cfg.hidden_size, cfg.head_dim
    q_rows, kv_rows, ffn = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd, cfg.intermediate_size
    items = [WeightPlan("embed_tokens", (HF_EMBED,), ((cfg.vocab_size, d),), "dense")]
    for i in range(cfg.num_hidden_layers):
        hf, p = hf_layer_names(i), f"layers.{i}"
        attn, mlp = f"{p}.self_attn", f"{p}.mlp"
        items.append(WeightPlan(f"{p}.input_layernorm", (hf["input_norm"],), ((d,),), "norm"))
        items.append(WeightPlan(f"{attn}.qkv_proj", (hf["q"], hf["k"], hf["v"]),
                                ((q_rows, d), (kv_rows, d), (kv_rows, d)), "linear"))
        if cfg.qkv_bias:
            items.append(WeightPlan(f"{attn}.qkv_proj", (hf["q_bias"], hf["k_bias"], hf["v_bias"]),
                                    ((q_rows,), (kv_rows,), (kv_rows,)), "bias"))
        items.append(WeightPlan(f"{attn}.o_proj", (hf["o"],), ((d, q_rows),), "linear"))
        if cfg.o_bias:
            items.append(WeightPlan(f"{attn}.o_proj", (hf["o_bias"],), ((d,),), "bias"))
        items.append(WeightPlan(f"{p}.post_attention_layernorm", (hf["post_norm"],), ((d,),), "norm"))
        items.append(WeightPlan(f"{mlp}.gate_up_proj", (hf["gate"], hf["up"]), ((ffn, d), (ffn, d)), "linear"))
        if cfg.mlp_bias:
            items.append(WeightPlan(f"{mlp}.gate_up_proj", (hf["gate_bias"], hf["up_bias"]), ((ffn,), (ffn,)), "bias"))
        items.append(WeightPlan(f"{mlp}.down_proj", (hf["down"],), ((d, ffn),), "linear"))
        if cfg.mlp_bias:
            items.append(WeightPlan(f"{mlp}.down_proj", (hf["down_bias"],), ((d,),), "bias"))
    items.append(WeightPlan("norm", (HF_FINAL_NORM,), ((d,),), "norm"))
    if not cfg.tie_word_embeddings:
        items.append(WeightPlan("lm_head", (HF_LM_HEAD,), ((cfg.vocab_size, d),), "dense"))  # see layers.Embedding
    return items


MAPPING = HFMapping(read_config=read_config, plan=plan)
