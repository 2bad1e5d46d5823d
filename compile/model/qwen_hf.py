"""Hugging Face Qwen2/Qwen2.5 (``Qwen2ForCausalLM``) and Qwen3 (``Qwen3ForCausalLM``) checkpoints
onto the Llama network: their tensors carry Llama's names, so only the config differs.

Qwen2 always has biases on Q, K and V (none on the output projection) and ties embeddings at
small sizes; Qwen3 has none of those biases but an RMSNorm over each head of Q and K; Qwen3-MoE is
Qwen3 with every MLP routed over experts (``compile/model/qwen3_moe.py``). Numpy only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compile.model.llama_hf import decoder_config, plan
from compile.weights import HFMapping, WeightPlan
from ferrum.errors import ModelSourceError
from ferrum.model_config import DecoderConfig


def _window(c: dict[str, Any]) -> int | None:
    """Qwen configs carry a ``sliding_window`` that applies only with ``use_sliding_window``."""
    return c.get("sliding_window") if c.get("use_sliding_window") else None


def read_qwen2(c: dict[str, Any], folder: Path) -> DecoderConfig:
    return decoder_config(c, folder, "qwen2", qkv_bias=True, sliding_window=_window(c))


def read_qwen3(c: dict[str, Any], folder: Path) -> DecoderConfig:
    bias = bool(c.get("attention_bias", False))
    return decoder_config(c, folder, "qwen3", qkv_bias=bias, o_bias=bias, qk_norm=True, sliding_window=_window(c))


QWEN2 = HFMapping(read_config=read_qwen2, plan=plan)
QWEN3 = HFMapping(read_config=read_qwen3, plan=plan)


def read_qwen3_moe(c: dict[str, Any], folder: Path) -> DecoderConfig:
    """Qwen3-MoE: Qwen3's attention, every layer's MLP routed over ``num_experts`` experts."""
    if c.get("mlp_only_layers") or c.get("decoder_sparse_step", 1) != 1:
        raise ModelSourceError(f"{folder}: dense layers among the expert layers (mlp_only_layers, "
                               "decoder_sparse_step) are not supported")
    bias = bool(c.get("attention_bias", False))
    try:
        experts = int(c.get("num_experts") or c["num_local_experts"])
        moe = {"num_experts": experts, "num_experts_per_tok": int(c["num_experts_per_tok"]),
               "moe_intermediate_size": int(c["moe_intermediate_size"]), "norm_topk_prob": bool(c.get("norm_topk_prob"))}
    except KeyError as exc:
        raise ModelSourceError(f"{folder}/config.json lacks {exc}") from None
    return decoder_config(c, folder, "qwen3_moe", qkv_bias=bias, o_bias=bias, qk_norm=True,
                          sliding_window=_window(c), **moe)


def expert_names(layer: int, expert: int) -> dict[str, str]:
    p = f"model.layers.{layer}.mlp"
    return {"router": f"{p}.gate.weight", **{part: f"{p}.experts.{expert}.{part}_proj.weight"
                                             for part in ("gate", "up", "down")}}


def plan_moe(cfg: DecoderConfig) -> list[WeightPlan]:
    """Qwen3's plan with each MLP replaced by the router and the experts stacked: ``gate_up`` is
    every expert's gate rows then up rows, expert after expert; ``down`` every expert's rows. The
    stacked experts are "linear" (int4 under q4f16, each row quantized alone, so stacking changes no
    value); the router is "dense" and stays in the model dtype."""
    items, d, ffn, n = [], cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts
    for item in plan(cfg):
        if ".mlp." not in item.name:
            items.append(item)
            continue
        if not item.name.endswith("gate_up_proj"):
            continue
        layer = int(item.name.split(".")[1])
        mlp = f"layers.{layer}.mlp"
        names = [expert_names(layer, e) for e in range(n)]
        items.append(WeightPlan(f"{mlp}.router", (names[0]["router"],), ((n, d),), "dense"))
        items.append(WeightPlan(f"{mlp}.experts_gate_up", tuple(x[p] for x in names for p in ("gate", "up")),
                                ((ffn, d),) * 2 * n, "linear"))
        items.append(WeightPlan(f"{mlp}.experts_down", tuple(x["down"] for x in names), ((d, ffn),) * n, "linear"))
    return items


QWEN3_MOE = HFMapping(read_config=read_qwen3_moe, plan=plan_moe)
