"""Hugging Face ``Gemma2ForCausalLM`` and ``Gemma3ForCausalLM`` (text) checkpoints onto
``compile/model/gemma.py``. Numpy only.

Gemma's RMSNorm scales by ``1 + weight``; the plan adds the 1 at load (``WeightPlan.offset``) so
the network runs a plain RMSNorm (llama.cpp's converter does the same, so GGUF files hold the
shifted values). Gemma 2 and 3 alternate sliding-window (local) layers with global ones; Gemma 3's keep their
own RoPE bases (``rope_local_base_freq``; ``rope_theta``, optionally linearly scaled, for the
global ones). The window is masked in the local layers only (``window_layers``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compile.model.llama_hf import HF_EMBED, HF_FINAL_NORM, HF_LM_HEAD, hf_layer_names, window_and_context
from compile.weights import HFMapping, WeightPlan
from ferrum.errors import ModelSourceError
from ferrum.model_config import DecoderConfig

SLIDING = "sliding_attention"


def _layer_types(c: dict[str, Any]) -> list[str]:
    """Each layer's attention kind: the config's ``layer_types`` (transformers 5), else Gemma 3's
    ``sliding_window_pattern`` (every pattern-th layer global) or Gemma 2's alternation."""
    if c.get("layer_types"):
        return list(c["layer_types"])
    pattern = c.get("sliding_window_pattern", c.get("_sliding_window_pattern", 2))
    return [SLIDING if (i + 1) % pattern else "full_attention" for i in range(c["num_hidden_layers"])]


def _rope(c: dict[str, Any], kind: str, folder: Path) -> tuple[float, dict[str, Any]]:
    """(RoPE base, scaling) of ``kind`` layers; scaling is {} or Gemma 3's linear factor."""
    params = c.get("rope_parameters") or {}
    if kind in params:  # transformers 5: one dict per layer kind
        params = params[kind]
    elif kind == SLIDING and c.get("rope_local_base_freq"):
        params = {"rope_theta": c["rope_local_base_freq"]}
    else:
        params = {"rope_theta": c.get("rope_theta", params.get("rope_theta", 10000.0)),
                  **(c.get("rope_scaling") or {}), **{k: v for k, v in params.items() if k != "rope_theta"}}
    kind_name = params.get("rope_type", params.get("type", "default"))
    if kind_name == "default":
        return float(params["rope_theta"]), {}
    if kind_name == "linear":
        return float(params["rope_theta"]), {"rope_type": "linear", "factor": float(params["factor"])}
    raise ModelSourceError(f"{folder}: RoPE scaling {kind_name!r} is not supported for Gemma (default or linear)")


def read_gemma(c: dict[str, Any], folder: Path, architecture: str) -> DecoderConfig:
    try:
        heads, hidden = c["num_attention_heads"], c["hidden_size"]
        types = _layer_types(c)
        window, context = window_and_context(c.get("sliding_window") if SLIDING in types else None,
                                             int(c.get("max_position_embeddings", 8192)))
        global_theta, scaling = _rope(c, "full_attention", folder)
        local_theta, _ = _rope(c, SLIDING, folder)
        local = [i for i, t in enumerate(types) if t == SLIDING] if local_theta != global_theta or scaling else []
        head_dim = c.get("head_dim") or hidden // heads
        return DecoderConfig(
            vocab_size=c["vocab_size"],
            hidden_size=hidden,
            intermediate_size=c["intermediate_size"],
            num_hidden_layers=c["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=c.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
            rope_theta=global_theta,
            context_length=context,
            sliding_window=window,
            window_layers=[i for i, t in enumerate(types) if t == SLIDING] if window else [],
            tie_word_embeddings=bool(c.get("tie_word_embeddings", True)),
            rope_scaling=scaling,
            architecture=architecture,
            qkv_bias=bool(c.get("attention_bias", False)),
            o_bias=bool(c.get("attention_bias", False)),
            qk_norm=architecture == "gemma3",
            activation=str(c.get("hidden_activation") or c.get("hidden_act", "gelu_pytorch_tanh")),
            post_norms=True,
            embed_scale=hidden**0.5,
            attention_scale=float(c.get("query_pre_attn_scalar", head_dim)) ** -0.5,
            final_logit_softcap=float(c.get("final_logit_softcapping") or 0.0),
            attn_logit_softcap=float(c.get("attn_logit_softcapping") or 0.0),
            local_layers=local,
            local_rope_theta=local_theta if local else 0.0,
        )
    except KeyError as exc:
        raise ModelSourceError(f"{folder}/config.json lacks {exc}") from None
    except ValueError as exc:
        raise ModelSourceError(f"{folder}/config.json: {exc}") from None


def read_gemma2(c: dict[str, Any], folder: Path) -> DecoderConfig:
    return read_gemma(c, folder, "gemma2")


def read_gemma3(c: dict[str, Any], folder: Path) -> DecoderConfig:
    return read_gemma(c, folder, "gemma3")


def plan(cfg: DecoderConfig) -> list[WeightPlan]:
    """Every parameter of ``GemmaForCausalLM`` (compile/model/gemma.py) in its call order."""
    d, hd = cfg.hidden_size, cfg.head_dim
    q_rows, kv_rows, ffn = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd, cfg.intermediate_size

    def norm(name: str, source: str, width: int = d) -> WeightPlan:
        return WeightPlan(name, (source,), ((width,),), "norm", offset=1.0)

    items = [WeightPlan("embed_tokens", (HF_EMBED,), ((cfg.vocab_size, d),), "dense")]
    for i in range(cfg.num_hidden_layers):
        hf, p = hf_layer_names(i), f"layers.{i}"
        attn, mlp = f"{p}.self_attn", f"{p}.mlp"
        items.append(norm(f"{p}.input_layernorm", hf["input_norm"]))
        items.append(WeightPlan(f"{attn}.qkv_proj", (hf["q"], hf["k"], hf["v"]),
                                ((q_rows, d), (kv_rows, d), (kv_rows, d)), "linear"))
        if cfg.qkv_bias:
            items.append(WeightPlan(f"{attn}.qkv_proj", (hf["q_bias"], hf["k_bias"], hf["v_bias"]),
                                    ((q_rows,), (kv_rows,), (kv_rows,)), "bias"))
        if cfg.qk_norm:
            items += [norm(f"{attn}.q_norm", hf["q_norm"], hd), norm(f"{attn}.k_norm", hf["k_norm"], hd)]
        items.append(WeightPlan(f"{attn}.o_proj", (hf["o"],), ((d, q_rows),), "linear"))
        if cfg.o_bias:
            items.append(WeightPlan(f"{attn}.o_proj", (hf["o_bias"],), ((d,),), "bias"))
        items.append(norm(f"{p}.post_attention_layernorm", hf["post_norm"]))
        items.append(norm(f"{p}.pre_feedforward_layernorm", hf["pre_ffn_norm"]))
        items.append(WeightPlan(f"{mlp}.gate_up_proj", (hf["gate"], hf["up"]), ((ffn, d), (ffn, d)), "linear"))
        items.append(WeightPlan(f"{mlp}.down_proj", (hf["down"],), ((d, ffn),), "linear"))
        items.append(norm(f"{p}.post_feedforward_layernorm", hf["post_ffn_norm"]))
    items.append(norm("norm", HF_FINAL_NORM))
    if not cfg.tie_word_embeddings:
        items.append(WeightPlan("lm_head", (HF_LM_HEAD,), ((cfg.vocab_size, d),), "dense"))
    return items


GEMMA2 = HFMapping(read_config=read_gemma2, plan=plan)
GEMMA3 = HFMapping(read_config=read_gemma3, plan=plan)
