"""Hugging Face ``Phi3ForCausalLM`` checkpoints onto the Llama network.

Phi-3 stores Q/K/V as one ``qkv_proj`` and gate/up as one ``gate_up_proj`` (gate rows first),
which is the layout of the network's fused projections, so they load as they are. LongRoPE
(``rope_scaling.type == "longrope"``, the 128k variants) is refused by name: TVM 0.27's longrope
kernel (``position_embedding.fused_rope_longrope_scaling``) picks the long or short factors by
the number of tokens in the forward pass, not by the sequence's length as transformers does, so a
decode step after a long prompt would rotate with the wrong factors. A partial rotary dimension
(Phi-4-mini) is refused too. Numpy only.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from compile.model.llama_hf import decoder_config, plan, rope_parameters
from compile.weights import HFMapping
from ferrum.errors import ModelSourceError
from ferrum.model_config import DecoderConfig


def read_phi3(c: dict[str, Any], folder: Path) -> DecoderConfig:
    rotary = float(rope_parameters(c).get("partial_rotary_factor", 1.0))
    if rotary != 1.0:
        raise ModelSourceError(f"{folder}: partial rotary embeddings (partial_rotary_factor {rotary}) are not supported")
    return decoder_config(c, folder, "phi3", sliding_window=c.get("sliding_window"))


MAPPING = HFMapping(read_config=read_phi3, plan=partial(plan, fused=True))
