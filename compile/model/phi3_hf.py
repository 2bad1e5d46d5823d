"""Hugging Face ``Phi3ForCausalLM`` checkpoints onto the Llama network.

Phi-3 stores Q/K/V as one ``qkv_proj`` and gate/up as one ``gate_up_proj`` (gate rows first),
which is the layout of the network's fused projections, so they load as they are. LongRoPE
(``rope_scaling.type == "longrope"``, or its older names ``su`` and ``yarn`` as transformers reads
them: the 128k variants, Phi-3.5) is read into ``DecoderConfig.rope_scaling`` by
``longrope_parameters``, and the network rotates Q and K itself with it
(``compile/model/longrope.py`` says how the short or long factors are picked). A partial rotary
dimension (Phi-4-mini) is refused. Numpy only.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

from compile.model.llama_hf import decoder_config, plan, rope_parameters
from compile.weights import HFMapping
from ferrum.errors import ModelSourceError
from ferrum.model_config import DecoderConfig

LONGROPE_NAMES = ("longrope", "su", "yarn")  # Phi3Config renames su and yarn to longrope


def longrope_parameters(c: dict[str, Any], folder: Path) -> dict[str, Any] | None:
    """The ``rope_scaling`` Ferrum stores for a LongRoPE config, else None (RoPE read as Llama's):
    both factor sets, the original context and the attention factor transformers derives when the
    config gives none (``sqrt(1 + ln(factor) / ln(original))``, the factor from the config or the
    ratio of the two context lengths)."""
    rope = rope_parameters(c)
    if rope.get("rope_type", rope.get("type")) not in LONGROPE_NAMES:
        return None
    try:
        original = int(rope.get("original_max_position_embeddings") or c["original_max_position_embeddings"])
        factor = float(rope.get("factor") or int(c.get("max_position_embeddings", 4096)) / original)
        attention = rope.get("attention_factor")
        if attention is None:
            attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
        return {"rope_type": "longrope", "short_factor": [float(f) for f in rope["short_factor"]],
                "long_factor": [float(f) for f in rope["long_factor"]], "original_max_position_embeddings": original,
                "attention_factor": float(attention)}
    except (KeyError, TypeError) as exc:
        raise ModelSourceError(f"{folder}/config.json: LongRoPE parameters lack {exc}") from None


def read_phi3(c: dict[str, Any], folder: Path) -> DecoderConfig:
    rotary = float(rope_parameters(c).get("partial_rotary_factor", 1.0))
    if rotary != 1.0:
        raise ModelSourceError(f"{folder}: partial rotary embeddings (partial_rotary_factor {rotary}) are not supported")
    return decoder_config(c, folder, "phi3", sliding_window=c.get("sliding_window"),
                          rope_scaling=longrope_parameters(c, folder))


MAPPING = HFMapping(read_config=read_phi3, plan=partial(plan, fused=True))
