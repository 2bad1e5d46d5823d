"""The decoder LLM architectures Ferrum compiles: name → network, Hugging Face mapping (as MLC-LLM's
``model/model.py``).

Every architecture is one network module (``compile/model/<name>.py``, a ``tvm.relax.frontend.nn``
module over ``DecoderConfig``, exporting ``ferrum.manifest.LLM_FUNCTIONS``) and one mapping module
(``compile/model/<name>_hf.py``, numpy only: Hugging Face ``config.json`` → ``DecoderConfig``, and
which checkpoint tensors make each parameter). They are named here as ``module:attribute`` and
imported on first use, so reading a source or restoring weights never imports the TVM compiler.
The decoder builder (``compile/builders/decoder.py``), the Hugging Face source and the weight
converter find them here; adding an architecture is its two modules and its row below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ferrum.errors import ModelSourceError

if TYPE_CHECKING:
    from compile.weights import HFMapping


@dataclass(frozen=True)
class Architecture:
    """One decoder architecture: its name (``DecoderConfig.architecture``), the Hugging Face
    ``model_type`` values it reads, and where its network and mapping live."""

    name: str
    hf_model_types: tuple[str, ...]
    network: str  # "module:attribute" of the nn.Module class: (config, quant, tvm target, CUDA kernels or None)
    mapping: str  # "module:attribute" of its HFMapping

    def network_class(self) -> Any:
        return _load(self.network)

    def hf_mapping(self) -> HFMapping:
        return _load(self.mapping)


def _load(spec: str) -> Any:
    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


# Qwen2/3, Mistral and Phi-3 are the Llama network with feature flags on (see DecoderConfig).
_LLAMA = "compile.model.llama:LlamaForCausalLM"
_GEMMA = "compile.model.gemma:GemmaForCausalLM"

ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("llama", ("llama",), _LLAMA, "compile.model.llama_hf:MAPPING"),
    "qwen2": Architecture("qwen2", ("qwen2",), _LLAMA, "compile.model.qwen_hf:QWEN2"),
    "qwen3": Architecture("qwen3", ("qwen3",), _LLAMA, "compile.model.qwen_hf:QWEN3"),
    "qwen3_moe": Architecture("qwen3_moe", ("qwen3_moe",), "compile.model.qwen3_moe:Qwen3MoeForCausalLM",
                              "compile.model.qwen_hf:QWEN3_MOE"),
    "mistral": Architecture("mistral", ("mistral",), _LLAMA, "compile.model.mistral_hf:MAPPING"),
    "phi3": Architecture("phi3", ("phi3",), _LLAMA, "compile.model.phi3_hf:MAPPING"),
    "gemma2": Architecture("gemma2", ("gemma2",), _GEMMA, "compile.model.gemma_hf:GEMMA2"),
    "gemma3": Architecture("gemma3", ("gemma3_text",), _GEMMA, "compile.model.gemma_hf:GEMMA3"),
}


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ModelSourceError(
            f"unsupported decoder architecture {name!r}; Ferrum compiles {', '.join(sorted(ARCHITECTURES))}"
        ) from None


def architecture_for_hf(model_type: str | None) -> Architecture | None:
    """The architecture that reads Hugging Face folders of ``model_type``, if any."""
    return next((a for a in ARCHITECTURES.values() if model_type in a.hf_model_types), None)
