"""Run a compiled sentence-embedding artifact: weights on the device, one padded batch per call.

The artifact's ``embed`` function does the whole model (encoder, masked mean pooling, L2
normalization), so this module only opens and checks the artifact, loads the weights with the
same tensor-cache builtins as ``model_runner.py``, right-pads token id lists into a (batch, seq)
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
from ferrum.manifest import Manifest, verify_files
from ferrum.quantization import get_quantization
from runtime.vm_loader import load_params, load_vm
from runtime.artifact import check_host, check_tvm_version, resolve_device
from runtime.tvm_env import register_kernels

_builtin = tvm.get_global_func


@dataclass
class EmbeddingArtifact:
    """A verified embedding artifact: its manifest, encoder config and file paths."""

    folder: Path
    manifest: Manifest
    config: BertConfig

    @property
    def library_path(self) -> Path:
        return self.folder / self.manifest.library

    @property
    def weights_path(self) -> Path:
        return self.folder / "weights"

    @property
    def tokenizer_path(self) -> Path:
        return self.folder / "tokenizer.json"

    @property
    def weight_bytes(self) -> int:
        return sum(f["bytes"] for rel, f in self.manifest.files.items() if rel.startswith("weights/"))

    @property
    def model_dtype(self) -> str:
        return get_quantization(self.manifest.quantization["name"]).model_dtype

    @classmethod
    def open(cls, folder: str | Path, verify_hashes: bool = True) -> EmbeddingArtifact:
        folder = Path(folder)
        manifest = Manifest.load(folder)
        if manifest.modality != "embedding":
            raise ArtifactError(f"artifact {manifest.name} is a {manifest.modality} model, not an embedding model")
        if manifest.architecture != "bert":
            raise ArtifactError(f"artifact {manifest.name}: unsupported embedding architecture {manifest.architecture!r}")
        check_tvm_version(manifest)
        check_host(manifest)
        if verify_hashes:
            verify_files(folder, manifest)
        register_kernels(folder, manifest.kernels)
        try:
            config = BertConfig.from_dict(manifest.model)
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"artifact {manifest.name} has a malformed model config: {exc}") from None
        return cls(folder, manifest, config)


class EmbeddingRunner:
    """The compiled encoder on one device. Not thread-safe: call from one thread."""

    def __init__(self, artifact: EmbeddingArtifact, device: str = "auto"):
        self.artifact = artifact
        self.config = artifact.config
        self.device = resolve_device(artifact.manifest, device)
        self.device_kind = artifact.manifest.target.device_type
        self._vm = load_vm(artifact.library_path, self.device)
        self.params = load_params(artifact.weights_path, artifact.manifest.extra["param_names"], self.device)
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
