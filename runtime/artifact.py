"""Open an artifact folder and refuse anything this machine cannot run, before loading it."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path

import tvm

from ferrum.errors import ArtifactError
from ferrum.manifest import LLM_FUNCTIONS, GenerationConfig, Manifest, host_cpu_flags, verify_files
from ferrum.model_config import LlamaConfig
from ferrum.quantization import get_quantization
from runtime.tvm_env import open_device, register_kernels

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


@dataclass
class LlmArtifact:
    """A verified LLM artifact: its manifest, configs and file paths."""

    folder: Path
    manifest: Manifest
    config: LlamaConfig
    generation: GenerationConfig

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
    def model_dtype(self) -> str:
        return get_quantization(self.manifest.quantization["name"]).model_dtype

    @classmethod
    def open(cls, folder: str | Path, verify_hashes: bool = True) -> LlmArtifact:
        folder = Path(folder)
        manifest = Manifest.load(folder)
        if manifest.modality != "llm":
            raise ArtifactError(f"artifact {manifest.name} is a {manifest.modality} model, not an LLM")
        check_llm_functions(manifest)
        check_tvm_version(manifest)
        check_host(manifest)
        if verify_hashes:
            verify_files(folder, manifest)
        register_kernels(folder, manifest.kernels)
        generation = GenerationConfig.from_dict(json.loads((folder / "generation.json").read_text()))
        return cls(folder, manifest, LlamaConfig.from_dict(manifest.model), generation)
