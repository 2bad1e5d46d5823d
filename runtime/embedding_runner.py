"""Run a compiled sentence-embedding artifact: weights on the device, one padded batch per call.

The artifact's ``embed`` function does the whole model (encoder, masked mean pooling, L2
normalization), so this module only opens the artifact (``runtime.artifact.open_artifact``),
loads the library and weights, right-pads token id lists into a (batch, seq)
block with its attention mask, and calls it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm

from ferrum.embedding_config import BertConfig
from ferrum.errors import ArtifactError, InvalidRequestError
from runtime.artifact import OpenedArtifact, open_artifact, resolve_device


@dataclass
class EmbeddingArtifact(OpenedArtifact):
    """A verified embedding artifact: its manifest, encoder config and file paths."""

    config: BertConfig

    @classmethod
    def open(cls, folder: str | Path, verify_hashes: bool = True) -> EmbeddingArtifact:
        opened = open_artifact(folder, "embedding", architecture="bert", verify_hashes=verify_hashes)
        try:
            config = BertConfig.from_dict(opened.manifest.model)
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"artifact {opened.manifest.name} has a malformed model config: {exc}") from None
        return cls(opened.folder, opened.manifest, config)


class EmbeddingRunner:
    """The compiled encoder on one device. Not thread-safe: call from one thread."""

    def __init__(self, artifact: EmbeddingArtifact, device: str = "auto"):
        self.artifact = artifact
        self.config = artifact.config
        self.device = resolve_device(artifact.manifest, device)
        self.device_kind = artifact.manifest.target.device_type
        self._vm = artifact.load_library(self.device)
        self.params = artifact.load_weights(self.device)
        self._embed = self._vm["embed"]

    def embed(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """float32 (len(sequences), hidden): one vector per token id list (single segment, type 0)."""
        if not sequences:
            raise InvalidRequestError("nothing to embed")
        longest = max(len(s) for s in sequences)
        if min(len(s) for s in sequences) < 1 or longest > self.config.max_length:
            raise InvalidRequestError(f"each sequence must have 1 to {self.config.max_length} tokens")
        ids = np.zeros((len(sequences), longest), dtype=np.int32)
        mask = np.zeros_like(ids)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise InvalidRequestError(f"token ids must be in [0, {self.config.vocab_size})")
        tensor = lambda a: tvm.runtime.tensor(a, self.device)  # noqa: E731
        out = self._embed(tensor(ids), tensor(np.zeros_like(ids)), tensor(mask), self.params)
        return out.numpy()
