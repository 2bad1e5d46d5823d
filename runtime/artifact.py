"""Open an artifact folder and refuse anything this machine cannot run, before loading it.

``open_artifact`` is the one opener every modality uses: manifest, modality, TVM version, host
CPU, file hashes, then the CUDA device code registered. What a modality adds on top (configs,
side files) is read by its own artifact type from the ``OpenedArtifact`` it returns.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tvm
from tvm.runtime.vm import VirtualMachine

from ferrum.errors import ArtifactError
from ferrum.manifest import LLM_FUNCTIONS, GenerationConfig, Manifest, host_cpu_flags, verify_files
from ferrum.model_config import DecoderConfig
from ferrum.quantization import get_quantization
from runtime.tvm_env import DEVICE_ALIASES, open_device, register_kernels
from runtime.vm_loader import load_params, load_vm


_TRIPLE_MACHINES = {"x86_64-linux-gnu": ("x86_64", "AMD64"), "aarch64-linux-gnu": ("aarch64", "arm64")}


def check_host(manifest: Manifest) -> None:
    """The host CPU must match the library's triple and have the CPU features it was built for."""
    machines = _TRIPLE_MACHINES.get(manifest.target.triple, ())
    if platform.machine() not in machines:
        raise ArtifactError(
            f"artifact {manifest.name} was built for {manifest.target.triple}, this machine is {platform.machine()}"
        )
    flags = host_cpu_flags()
    missing = [f for f in manifest.target.cpu_features if f not in flags]
    if flags and missing:
        raise ArtifactError(
            f"artifact {manifest.name} needs CPU features this machine lacks: {', '.join(missing)}; "
            "recompile it on this machine"
        )


def check_tvm_version(manifest: Manifest) -> None:
    built, here = manifest.tvm_version.split("."), tvm.__version__.split(".")
    if built[:2] != here[:2]:
        raise ArtifactError(
            f"artifact {manifest.name} was compiled with TVM {manifest.tvm_version}; this runtime is "
            f"TVM {tvm.__version__}"
        )


def resolve_device(manifest: Manifest, requested: str = "auto") -> tvm.runtime.Device:
    """The device to run on: the artifact's target, checked against ``requested`` and the device
    (``runtime/tvm_env.py``'s entry for the target's device type)."""
    kind, _, index = requested.partition(":")
    kind = DEVICE_ALIASES.get(kind, kind)
    if kind not in ("auto", manifest.target.device_type):
        raise ArtifactError(
            f"artifact {manifest.name} is compiled for {manifest.target.kind} and cannot run on {requested!r}"
        )
    return open_device(manifest.name, manifest.target, int(index or 0))


def check_llm_functions(manifest: Manifest) -> None:
    """An LLM artifact of any architecture runs if its library exports the runtime's interface."""
    missing = [f for f in LLM_FUNCTIONS if f not in manifest.functions]
    if missing:
        raise ArtifactError(
            f"artifact {manifest.name} ({manifest.architecture}) is not a runnable LLM: its library lacks "
            f"{', '.join(missing)}"
        )


# how a refusal names the model a modality's engine wanted
_A_MODEL = {"llm": "an LLM", "embedding": "an embedding model", "transcription": "a transcription model",
            "tts": "a speech synthesis voice"}


@dataclass
class OpenedArtifact:
    """A verified artifact folder: its manifest (with the modality's typed ``extra``) and its files."""

    folder: Path
    manifest: Manifest

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

    def load_library(self, device: tvm.runtime.Device) -> VirtualMachine:
        return load_vm(self.library_path, device)

    def load_weights(self, device: tvm.runtime.Device) -> Sequence[tvm.runtime.Tensor]:
        """The weights on ``device``, in the order the compiled functions take them."""
        return load_params(self.weights_path, self.manifest.extra.param_names, device)


def open_artifact(
    folder: str | Path, modality: str, *, architecture: str | None = None, verify_hashes: bool = True
) -> OpenedArtifact:
    """Open ``folder`` as a ``modality`` artifact (of ``architecture``, when given) that this machine
    can run: every check happens here, before anything is loaded onto a device."""
    folder = Path(folder)
    manifest = Manifest.load(folder)
    if manifest.modality != modality:
        raise ArtifactError(f"artifact {manifest.name} is a {manifest.modality} model, not {_A_MODEL[modality]}")
    if architecture is not None and manifest.architecture != architecture:
        raise ArtifactError(
            f"artifact {manifest.name}: unsupported {modality} architecture {manifest.architecture!r} "
            f"(this runtime serves {architecture!r})"
        )
    check_tvm_version(manifest)
    check_host(manifest)
    if verify_hashes:
        verify_files(folder, manifest)
    register_kernels(folder, manifest.kernels)
    return OpenedArtifact(folder, manifest)


@dataclass
class LlmArtifact(OpenedArtifact):
    """A verified LLM artifact: its manifest, configs and file paths."""

    config: DecoderConfig
    generation: GenerationConfig

    @classmethod
    def open(cls, folder: str | Path, verify_hashes: bool = True) -> LlmArtifact:
        opened = open_artifact(folder, "llm", verify_hashes=verify_hashes)
        manifest = opened.manifest
        check_llm_functions(manifest)
        generation = GenerationConfig.from_dict(json.loads((opened.folder / "generation.json").read_text()))
        return cls(opened.folder, manifest, DecoderConfig.from_dict(manifest.model), generation)
