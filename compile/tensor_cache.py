"""Write weights in TVM's tensor-cache layout (``tensor-cache.json`` + ``params_shard_*.bin``).

It is the layout ``vm.builtin.tensor_cache.load`` reads straight onto the device in C++, so the
runtime needs no Python loop over tensors. Written with numpy alone (see ``compile/weights.py``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

SHARD_BYTES = 64 << 20
INDEX_NAME = "tensor-cache.json"


def write_tensor_cache(
    params: Iterable[tuple[str, np.ndarray]],
    folder: Path,
    progress: Callable[[str, int], None] | None = None,
) -> list[str]:
    """Write ``params`` into shards under ``folder``; return parameter names in written order."""
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = []
    names: list[str] = []
    pending: list[dict] = []
    buffer = bytearray()

    def flush() -> None:
        if not pending:
            return
        path = folder / f"params_shard_{len(shards)}.bin"
        path.write_bytes(buffer)
        shards.append(
            {
                "dataPath": path.name,
                "format": "raw-shard",
                "nbytes": len(buffer),
                "records": list(pending),
                "md5sum": hashlib.md5(buffer).hexdigest(),
            }
        )
        pending.clear()
        buffer.clear()

    for name, array in params:
        data = np.ascontiguousarray(array).tobytes()
        if buffer and len(buffer) + len(data) > SHARD_BYTES:
            flush()
        pending.append(
            {
                "name": name,
                "shape": list(array.shape),
                "dtype": str(array.dtype),
                "format": "raw",
                "nbytes": len(data),
                "byteOffset": len(buffer),
            }
        )
        buffer += data
        names.append(name)
        if progress:
            progress(name, len(names))
    flush()
    (folder / INDEX_NAME).write_text(json.dumps({"metadata": {}, "records": shards}, indent=1))
    return names
