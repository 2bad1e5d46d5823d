"""What model sources hand to the compile stage.

Every source says its architecture (which picks the builder), format, path and name. Llama
sources differ in container (GGUF, safetensors) and naming; ``LlamaSource`` hides both. Tensors
are served by Hugging Face ``LlamaForCausalLM`` names in Hugging Face layouts (so a GGUF's
Q/K rows come back un-permuted), as float32 numpy arrays, one at a time: peak memory stays one
tensor, not one model.
"""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np

from ferrum.manifest import GenerationConfig
from ferrum.model_config import LlamaConfig


class ModelSource(abc.ABC):
    """Any model to compile. ``architecture`` picks the builder (``compile/builders``)."""

    architecture: str
    format: str
    path: Path
    name: str

    def describe(self) -> dict[str, str]:
        """Provenance recorded in the manifest."""
        return {"format": self.format, "path": str(self.path), "name": self.name}


class LlamaSource(ModelSource):
    """A Llama-family LLM: config, generation defaults, tokenizer and tensors by HF name."""

    architecture = "llama"
    config: LlamaConfig
    generation: GenerationConfig
    tokenizer_json: str

    @abc.abstractmethod
    def tensor_names(self) -> set[str]:
        """Hugging Face names of the tensors this source holds."""

    @abc.abstractmethod
    def tensor(self, name: str) -> np.ndarray:
        """One tensor by Hugging Face name, float32, Hugging Face layout."""


def hf_layer_names(layer: int) -> dict[str, str]:
    """The per-layer tensor names of Hugging Face ``LlamaForCausalLM``."""
    p = f"model.layers.{layer}"
    return {
        "q": f"{p}.self_attn.q_proj.weight",
        "k": f"{p}.self_attn.k_proj.weight",
        "v": f"{p}.self_attn.v_proj.weight",
        "o": f"{p}.self_attn.o_proj.weight",
        "gate": f"{p}.mlp.gate_proj.weight",
        "up": f"{p}.mlp.up_proj.weight",
        "down": f"{p}.mlp.down_proj.weight",
        "input_norm": f"{p}.input_layernorm.weight",
        "post_norm": f"{p}.post_attention_layernorm.weight",
    }


HF_EMBED = "model.embed_tokens.weight"
HF_FINAL_NORM = "model.norm.weight"
HF_LM_HEAD = "lm_head.weight"
