"""Hugging Face ``MistralForCausalLM`` checkpoints onto the Llama network: Llama's tensors and
config keys plus ``sliding_window`` (4096 in Mistral 7B v0.1, null from v0.2), masked in every
layer (``compile/model/sliding_window.py``). Numpy only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compile.model.llama_hf import decoder_config, plan
from compile.weights import HFMapping
from ferrum.model_config import DecoderConfig


def read_mistral(c: dict[str, Any], folder: Path) -> DecoderConfig:
    return decoder_config(c, folder, "mistral", sliding_window=c.get("sliding_window"))


MAPPING = HFMapping(read_config=read_mistral, plan=plan)
