"""Load an artifact's compiled library and its weights onto a device: the two steps every runner
(LLM, embedding, transcription, speech) starts with, through ``runtime.artifact.OpenedArtifact``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import ml_dtypes
import numpy as np
import tvm
import tvm_ffi
from tvm.runtime.vm import VirtualMachine

from ferrum.errors import ArtifactError

_builtin = tvm.get_global_func


def load_vm(library: Path, device: tvm.runtime.Device) -> VirtualMachine:
    try:
        return VirtualMachine(tvm.runtime.load_module(str(library)), device)
    except Exception as exc:  # TVM raises several error types for unloadable libraries
        raise ArtifactError(f"cannot load {library}: {exc}") from None


def load_params(weights: Path, names: list[str], device: tvm.runtime.Device) -> Sequence[tvm.runtime.Tensor]:
    """The weights named ``names``, in that order, from a TVM tensor cache folder, on ``device``.

    On the CPU the shards are memory-mapped and the tensors are views of the mapping (copy on
    write, so nothing can change the files): no copy is made, the page cache is shared between
    processes serving the same artifact, and loading takes milliseconds instead of a read and a
    copy of every byte (0.3-0.7 s of a cold start for SmolLM2). Other devices, and a record this
    cannot map, go through TVM's own loader."""
    if device.dlpack_device_type() == tvm_ffi.DLDeviceType.kDLCPU:
        mapped = _mapped_params(Path(weights), names)
        if mapped is not None:
            return mapped
    _builtin("vm.builtin.tensor_cache.load")(str(weights), device.dlpack_device_type(), device.index)
    try:
        return _builtin("vm.builtin.param_array_from_cache_by_name")(names)
    finally:
        _builtin("vm.builtin.tensor_cache.clear")()


_ALIGNMENT = 64  # what TVM's CPU kernels assume of a tensor's data pointer


def _mapped_params(folder: Path, names: list[str]) -> list[tvm.runtime.Tensor] | None:
    """Zero-copy CPU tensors over memory-mapped shards, or None where the layout is not plain raw."""
    try:
        index = json.loads((folder / "tensor-cache.json").read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {folder / 'tensor-cache.json'}: {exc}") from None
    tensors: dict[str, tvm.runtime.Tensor] = {}
    for shard in index.get("records", []):
        if shard.get("format") != "raw-shard":
            return None
        data = np.asarray(np.memmap(folder / shard["dataPath"], dtype=np.uint8, mode="c"))  # plain views: fast slicing
        for record in shard["records"]:
            dtype = _numpy_dtype(record["dtype"])
            if record.get("format") != "raw" or dtype is None:
                return None
            start = record["byteOffset"]
            view = data[start:start + record["nbytes"]].view(dtype).reshape(record["shape"])
            if view.ctypes.data % _ALIGNMENT:
                tensors[record["name"]] = tvm.runtime.tensor(np.array(view))  # TVM allocates it aligned
            else:
                tensors[record["name"]] = tvm.runtime.from_dlpack(view)
    missing = [name for name in names if name not in tensors]
    if missing:
        raise ArtifactError(f"{folder} lacks the weights {', '.join(missing[:5])}")
    return [tensors[name] for name in names]


def _numpy_dtype(name: str) -> np.dtype | None:
    try:
        return np.dtype(name)
    except TypeError:
        extra = getattr(ml_dtypes, name, None)  # bfloat16, float8_*: TVM's own dependency
        return np.dtype(extra) if extra is not None else None
