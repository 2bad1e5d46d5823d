"""Run a compiled Whisper artifact: open it, load library and weights, call encode/prefill/decode.

The decoder's self-attention cache is a pair of tensors (K ``[L, p, D]``, V transposed
``[L, D, p]``) that each call returns grown by the tokens it appended; the runner keeps them on
the device between calls and never copies them to the host.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tvm

from ferrum.errors import ArtifactError, InvalidRequestError
from ferrum.manifest_extra import WHISPER_DECODING_FILE, WhisperDecoding
from runtime.artifact import OpenedArtifact, open_artifact, resolve_device


@dataclass
class WhisperArtifact(OpenedArtifact):
    """A verified transcription artifact: manifest, model shapes and decoding constants (``whisper.json``)."""

    decoding: WhisperDecoding

    @property
    def model(self) -> dict[str, Any]:
        return self.manifest.model

    @classmethod
    def open(cls, folder: str | Path, verify_hashes: bool = True) -> WhisperArtifact:
        opened = open_artifact(folder, "transcription", architecture="whisper", verify_hashes=verify_hashes)
        path = opened.folder / WHISPER_DECODING_FILE
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise ArtifactError(f"{path} is not valid JSON: {exc}") from None
        return cls(opened.folder, opened.manifest, WhisperDecoding.from_dict(data, str(path)))


class DecoderState:
    """One audio window's cross-attention K/V and the growing self-attention cache."""

    def __init__(self, cross_k, cross_v):
        self.cross_k, self.cross_v = cross_k, cross_v
        self.self_k = self.self_v = None
        self.length = 0


class WhisperRunner:
    """The compiled model on one device."""

    def __init__(self, artifact: WhisperArtifact, device: str = "auto"):
        self.artifact = artifact
        self.device = resolve_device(artifact.manifest, device)
        self.device_kind = artifact.manifest.target.device_type
        self.dtype = artifact.model_dtype
        self.n_text_ctx = int(artifact.model["n_text_ctx"])
        self._vm = artifact.load_library(self.device)
        self.params = artifact.load_weights(self.device)
        self._encode, self._prefill, self._decode = self._vm["encode"], self._vm["prefill"], self._vm["decode"]

    def encode(self, mel: np.ndarray) -> DecoderState:
        """Run the encoder on one (n_mels, 3000) window; returns a fresh decoder state."""
        out = self._encode(tvm.runtime.tensor(mel.astype(self.dtype), self.device), self.params)
        return DecoderState(out[0], out[1])

    def step(self, state: DecoderState, tokens: list[int]) -> np.ndarray:
        """Append ``tokens`` to the decoder; float32 logits (vocab,) after the last one."""
        if state.length + len(tokens) > self.n_text_ctx:
            raise InvalidRequestError(f"decoder context of {self.n_text_ctx} tokens exceeded")
        ids = tvm.runtime.tensor(np.asarray(tokens, np.int32), self.device)
        if state.self_k is None:
            out = self._prefill(ids, state.cross_k, state.cross_v, self.params)
        else:
            out = self._decode(ids, state.cross_k, state.cross_v, state.self_k, state.self_v, self.params)
        state.self_k, state.self_v = out[1], out[2]
        state.length += len(tokens)
        return out[0].numpy().reshape(-1)
