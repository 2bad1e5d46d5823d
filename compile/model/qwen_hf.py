"""Hugging Face Qwen2/Qwen2.5 (``Qwen2ForCausalLM``) and Qwen3 (``Qwen3ForCausalLM``) checkpoints
onto the Llama network: their tensors carry Llama's names, so only the config differs.

Qwen2 always has biases on Q, K and V (none on the output projection) and ties embeddings at
small sizes; Qwen3 has none of those biases but an RMSNorm over each head of Q and K. Numpy only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compile.model.llama_hf import decoder_config, plan
from compile.weights import HFMapping
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
