"""Run a compiled Whisper artifact: open and check it, load weights, call encode/prefill/decode.

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
from ferrum.manifest import Manifest, verify_files
from runtime.vm_loader import load_params, load_vm
from runtime.artifact import check_host, check_tvm_version, resolve_device
from runtime.tvm_env import register_kernels

_builtin = tvm.get_global_func


@dataclass
class WhisperArtifact:
    """A verified transcription artifact: manifest, model shapes and decoding constants."""

    folder: Path
    manifest: Manifest
    whisper: dict[str, Any]

    @property
    def model(self) -> dict[str, Any]:
        return self.manifest.model

    @classmethod
    def open(cls, folder: str | Path, verify_hashes: bool = True) -> WhisperArtifact:
        folder = Path(folder)
        manifest = Manifest.load(folder)
        if manifest.modality != "transcription" or manifest.architecture != "whisper":
            raise ArtifactError(
                f"artifact {manifest.name} is a {manifest.modality} {manifest.architecture} model, not Whisper"
            )
        check_tvm_version(manifest)
        check_host(manifest)
        if verify_hashes:
            verify_files(folder, manifest)
        register_kernels(folder, manifest.kernels)
        whisper = json.loads((folder / "whisper.json").read_text())
        return cls(folder, manifest, whisper)


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
        self.dtype = {"q0f32": "float32", "q0f16": "float16"}[artifact.manifest.quantization["name"]]
        self.n_text_ctx = int(artifact.model["n_text_ctx"])
        self._vm = load_vm(artifact.folder / artifact.manifest.library, self.device)
        self.params = load_params(artifact.folder / "weights", artifact.manifest.extra["param_names"], self.device)
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
