"""Weights made on the device instead of loaded (``--load-format dummy``, as vLLM's dummy format).

Speed does not depend on weight values, and an 8B model's weights need not exist to measure how
fast it serves: a shape-only artifact (``bench/compile_shape.py``, its manifest lists every
parameter's shape and dtype) or any LLM artifact (shapes from its tensor cache) runs on tensors
allocated on the device and filled from one host chunk per kind of parameter, copied piecewise,
so an 8B model fills in seconds and without the host ever holding its size. The values keep
activations finite: normal(0, 0.02) matrices, unit norm weights, random int4 nibbles with scales
and minimums that keep dequantized values in about ±0.05 (the same as ``bench/gpu_bench.py``).
Generated text is meaningless; only speed and memory are real.
"""

from __future__ import annotations

import json

import numpy as np
import tvm

from ferrum.errors import ArtifactError
from runtime.artifact import LlmArtifact

LOAD_FORMATS = ("auto", "dummy")  # auto: the artifact's weights/; dummy: generated here
CHUNK_ELEMENTS = 1 << 20  # elements per host-to-device copy (and of each host pattern)


def weight_shapes(artifact: LlmArtifact) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of every parameter, in the order the compiled functions take them."""
    extra = artifact.manifest.extra
    shapes = extra.param_shapes
    if shapes is None:
        cache = artifact.weights_path / "tensor-cache.json"
        if not cache.exists():
            raise ArtifactError(f"artifact {artifact.manifest.name} records no parameter shapes (neither "
                                "extra.param_shapes nor weights/tensor-cache.json)")
        records = json.loads(cache.read_text())["records"]
        shapes = {r["name"]: [r["shape"], r["dtype"]] for shard in records for r in shard["records"]}
    missing = [name for name in extra.param_names if name not in shapes]
    if missing:
        raise ArtifactError(f"artifact {artifact.manifest.name} has no shape for {', '.join(missing[:3])}")
    return [(name, tuple(int(d) for d in shapes[name][0]), str(shapes[name][1])) for name in extra.param_names]


def _pattern(name: str, dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):  # packed int4 nibbles (or int8 values): any bits
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, CHUNK_ELEMENTS, dtype=dtype, endpoint=True)
    if name.endswith("norm.weight"):
        return np.ones(CHUNK_ELEMENTS, dtype)
    if name.endswith("q_scale"):
        return np.full(CHUNK_ELEMENTS, 0.1 / 15, dtype)
    if name.endswith("q_min"):
        return np.full(CHUNK_ELEMENTS, -0.05, dtype)
    return (rng.standard_normal(CHUNK_ELEMENTS) * 0.02).astype(dtype)


def _kind(name: str, dtype: np.dtype) -> tuple[str, str]:
    for suffix in ("norm.weight", "q_scale", "q_min"):
        if name.endswith(suffix):
            return suffix, dtype.name
    return "values", dtype.name


def dummy_params(artifact: LlmArtifact, device: tvm.runtime.Device, seed: int = 0) -> list[tvm.runtime.Tensor]:
    """Every parameter as a device tensor of its shape and dtype, filled as the module says."""
    rng = np.random.default_rng(seed)
    patterns: dict[tuple[str, str], np.ndarray] = {}
    params = []
    for name, shape, dtype_name in weight_shapes(artifact):
        dtype = np.dtype(dtype_name)
        kind = _kind(name, dtype)
        if kind not in patterns:
            patterns[kind] = _pattern(name, dtype, rng)
        pattern = patterns[kind]
        tensor = tvm.runtime.empty(shape, dtype_name, device)
        size = int(np.prod(shape))
        for start in range(0, size, CHUNK_ELEMENTS):
            n = min(CHUNK_ELEMENTS, size - start)
            tensor._create_view((n,), dtype_name, start * dtype.itemsize).copyfrom(pattern[:n])
        params.append(tensor)
    return params
