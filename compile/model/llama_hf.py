"""Hugging Face ``LlamaForCausalLM`` checkpoints onto ``compile/model/llama.py``: config and tensors.

Numpy only (see ``compile/model/architectures.py``). The families whose checkpoints are a Llama
with flags on (Qwen2/3, Mistral, Phi-3: ``compile/model/<family>_hf.py``) read their configs with
``decoder_config`` and plan their tensors with ``plan``. GGUF files are served under these names
too (``compile/sources/gguf_source.py``), so one plan covers both containers.
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
    """The per-layer tensor names of Hugging Face Llama-style checkpoints: weights, the biases of
    checkpoints with them, Qwen3's q/k norms, Gemma's extra norms and Phi-3's fused ``qkv``/``gate_up``
    projections."""
    p = f"model.layers.{layer}"
    names = {"input_norm": f"{p}.input_layernorm.weight", "post_norm": f"{p}.post_attention_layernorm.weight",
             "q_norm": f"{p}.self_attn.q_norm.weight", "k_norm": f"{p}.self_attn.k_norm.weight",
             "pre_ffn_norm": f"{p}.pre_feedforward_layernorm.weight",  # Gemma's extra norms
             "post_ffn_norm": f"{p}.post_feedforward_layernorm.weight"}
    for part, module in (("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"),
                         ("o", "self_attn.o_proj"), ("gate", "mlp.gate_proj"), ("up", "mlp.up_proj"),
                         ("down", "mlp.down_proj"), ("qkv", "self_attn.qkv_proj"), ("gate_up", "mlp.gate_up_proj")):
        names[part] = f"{p}.{module}.weight"
        names[f"{part}_bias"] = f"{p}.{module}.bias"
    return names


def rope_parameters(c: dict[str, Any]) -> dict[str, Any]:
    """RoPE settings wherever the config keeps them: ``rope_theta``/``rope_scaling``/``partial_rotary_factor``
    at the top (checkpoints written before transformers 5) or one ``rope_parameters`` dict (transformers 5)."""
    merged = {k: c[k] for k in ("rope_theta", "partial_rotary_factor") if c.get(k) is not None}
    return {**merged, **(c.get("rope_scaling") or {}), **(c.get("rope_parameters") or {})}


def rope_scaling(c: dict[str, Any], folder: Path, supported: tuple[str, ...] = SUPPORTED_ROPE) -> dict[str, Any]:
    """The config's RoPE scaling as TVM's kernels take it ({} for none); a kind they lack is refused by name."""
    scaling = {k: v for k, v in rope_parameters(c).items() if k not in ("rope_theta", "partial_rotary_factor")}
    kind = scaling.pop("rope_type", scaling.pop("type", "default"))
    if kind not in supported:
        raise ModelSourceError(f"{folder}: RoPE scaling {kind!r} is not supported (Ferrum takes {', '.join(supported)})")
    return {} if kind == "default" else {**scaling, "rope_type": kind}


def window_and_context(window: int | None, context: int) -> tuple[int, int]:
    """(sliding window, context length) to compile with: a window no shorter than the context
    never masks anything, so it becomes 0 (full attention); a shorter one is masked by the
    attention kernels (``compile/model/sliding_window.py``) over a cache of the whole context."""
    return (int(window) if window and window < context else 0), context


def window_layers(c: dict[str, Any], window: int, layers: int) -> list[int]:
    """The layers a sliding window applies to: the config's ``layer_types`` (transformers 5
    writes them), else Qwen's rule (layers from ``max_window_layers`` on, where the config has
    it), else every layer (Mistral, Phi-3)."""
    if not window:
        return []
    if c.get("layer_types"):
        return [i for i, kind in enumerate(c["layer_types"]) if kind == "sliding_attention"]
    return list(range(int(c.get("max_window_layers") or 0), layers))


def decoder_config(c: dict[str, Any], folder: Path, architecture: str, **flags: Any) -> DecoderConfig:
    """``DecoderConfig`` from a Llama-style ``config.json``: sizes under Llama's key names, the
    architecture's own ``flags`` (``qkv_bias=True``...; a ``rope_scaling`` the architecture read
    itself) on top. Missing keys and inconsistent sizes are refused with the folder named."""
    try:
        heads, scaling = c["num_attention_heads"], flags.pop("rope_scaling", None)
        window, context = window_and_context(flags.pop("sliding_window", None),
                                             int(c.get("max_position_embeddings", 2048)))
        windowed = window_layers(c, window, c["num_hidden_layers"])
        window = window if windowed else 0
        return DecoderConfig(
            vocab_size=c["vocab_size"],
            hidden_size=c["hidden_size"],
            intermediate_size=c["intermediate_size"],
            num_hidden_layers=c["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=c.get("num_key_value_heads") or heads,
            head_dim=c.get("head_dim") or c["hidden_size"] // heads,
            rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_parameters(c).get("rope_theta", 10000.0)),
            context_length=context,
            sliding_window=window,
            window_layers=windowed,
            tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
            rope_scaling=scaling if scaling is not None else rope_scaling(c, folder),
            architecture=architecture,
            activation=str(c.get("hidden_act", "silu")),
            **flags,
        )
    except KeyError as exc:
        raise ModelSourceError(f"{folder}/config.json lacks {exc}") from None
    except ValueError as exc:
        raise ModelSourceError(f"{folder}/config.json: {exc}") from None


def read_config(c: dict[str, Any], folder: Path) -> DecoderConfig:
    """``config.json`` of a ``LlamaForCausalLM`` checkpoint: every key that changes the network is
    read into a field (the network refuses the values it does not implement)."""
    bias = bool(c.get("attention_bias", False))
    return decoder_config(c, folder, "llama", qkv_bias=bias, o_bias=bias, mlp_bias=bool(c.get("mlp_bias", False)))


def plan(cfg: DecoderConfig, fused: bool = False) -> list[WeightPlan]:
    """Every parameter of ``LlamaForCausalLM`` (compile/model/llama.py) in its call order.

    ``fused``: the checkpoint stores Q/K/V as one ``qkv_proj`` and gate/up as one ``gate_up_proj``
    (Phi-3), already in the order the network's fused projections take."""
    d, hd = cfg.hidden_size, cfg.head_dim
    q_rows, kv_rows, ffn = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd, cfg.intermediate_size
    items = [WeightPlan("embed_tokens", (HF_EMBED,), ((cfg.vocab_size, d),), "dense")]
    for i in range(cfg.num_hidden_layers):
        hf, p = hf_layer_names(i), f"layers.{i}"
        attn, mlp = f"{p}.self_attn", f"{p}.mlp"
        items.append(WeightPlan(f"{p}.input_layernorm", (hf["input_norm"],), ((d,),), "norm"))
        if fused:
            items.append(WeightPlan(f"{attn}.qkv_proj", (hf["qkv"],), ((q_rows + 2 * kv_rows, d),), "linear"))
        else:
            items.append(WeightPlan(f"{attn}.qkv_proj", (hf["q"], hf["k"], hf["v"]),
                                    ((q_rows, d), (kv_rows, d), (kv_rows, d)), "linear"))
        if cfg.qkv_bias:
            items.append(WeightPlan(f"{attn}.qkv_proj", (hf["q_bias"], hf["k_bias"], hf["v_bias"]),
                                    ((q_rows,), (kv_rows,), (kv_rows,)), "bias"))
        if cfg.qk_norm:
            items.append(WeightPlan(f"{attn}.q_norm", (hf["q_norm"],), ((hd,),), "norm"))
            items.append(WeightPlan(f"{attn}.k_norm", (hf["k_norm"],), ((hd,),), "norm"))
        items.append(WeightPlan(f"{attn}.o_proj", (hf["o"],), ((d, q_rows),), "linear"))
        if cfg.o_bias:
            items.append(WeightPlan(f"{attn}.o_proj", (hf["o_bias"],), ((d,),), "bias"))
        items.append(WeightPlan(f"{p}.post_attention_layernorm", (hf["post_norm"],), ((d,),), "norm"))
        if fused:
            items.append(WeightPlan(f"{mlp}.gate_up_proj", (hf["gate_up"],), ((2 * ffn, d),), "linear"))
        else:
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
