"""What model sources hand to the compile stage.

Every source says its architecture (which picks the builder), format, path and name. Decoder
LLM sources differ in container (GGUF, safetensors) and naming; ``DecoderSource`` hides both.
Tensors are served by their Hugging Face names in Hugging Face layouts (so a GGUF's Q/K rows
come back un-permuted), as float32 numpy arrays, one at a time: peak memory stays one tensor,
not one model.
"""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np

from ferrum.manifest import GenerationConfig
from ferrum.model_config import DecoderConfig


class ModelSource(abc.ABC):
    """Any model to compile. ``architecture`` picks the builder (``compile/builders``)."""

    architecture: str
    format: str
    path: Path
    name: str

    def describe(self) -> dict[str, str]:
        """Provenance recorded in the manifest."""
        return {"format": self.format, "path": str(self.path), "name": self.name}


class DecoderSource(ModelSource):
    """A decoder LLM: config, generation defaults, tokenizer and tensors by Hugging Face name.
    ``config.architecture`` names its entry in ``compile/model/architectures.py``."""

    config: DecoderConfig
    generation: GenerationConfig
    tokenizer_json: str

    @property
    def architecture(self) -> str:
        return self.config.architecture

    @property
    def int4_weights(self) -> bool:
        """Whether the checkpoint already stores its linear weights in 4-bit blocks (a Q4 GGUF):
        then an int4 artifact keeps them as they are, and CPU builds default to one."""
        return False

    @abc.abstractmethod
    def tensor_names(self) -> set[str]:
        """Hugging Face names of the tensors this source holds."""

    @abc.abstractmethod
    def tensor(self, name: str) -> np.ndarray:
        """One tensor by Hugging Face name, float32, Hugging Face layout."""
