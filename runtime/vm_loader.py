"""Load an artifact's compiled library and its weights onto a device: the two steps every runner
(LLM, embedding, transcription, speech) starts with, through ``runtime.artifact.OpenedArtifact``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import tvm
from tvm.runtime.vm import VirtualMachine

from ferrum.errors import ArtifactError

_builtin = tvm.get_global_func


def load_vm(library: Path, device: tvm.runtime.Device) -> VirtualMachine:
    try:
        return VirtualMachine(tvm.runtime.load_module(str(library)), device)
    except Exception as exc:  # TVM raises several error types for unloadable libraries
        raise ArtifactError(f"cannot load {library}: {exc}") from None


def load_params(weights: Path, names: list[str], device: tvm.runtime.Device) -> Sequence[tvm.runtime.Tensor]:
    """The weights named ``names``, in that order, from a TVM tensor cache folder, on ``device``."""
    _builtin("vm.builtin.tensor_cache.load")(str(weights), device.dlpack_device_type(), device.index)
    try:
        return _builtin("vm.builtin.param_array_from_cache_by_name")(names)
    finally:
        _builtin("vm.builtin.tensor_cache.clear")()
