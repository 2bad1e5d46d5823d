"""Split parameters larger than a device's storage-binding limit into row shards.

WebGPU binds each kernel argument as one storage buffer, and an adapter binds at most
``maxStorageBufferBindingSize`` bytes (128 MiB on lavapipe and in browsers): a 1B-8B model's
embedding table and LM head, and an 8B float16 gate/up projection, are larger. ``split_oversized``
replaces, in a built network, every linear layer and embedding table with a parameter over the
limit by shards of whole output rows (vocabulary rows for the embedding), each under it:

- a linear layer becomes ``SplitLinear``: one linear function per shard of output rows (int4
  weights, scales and minimums split alike, as is a bias), outputs concatenated;
- an embedding becomes ``ShardedEmbedding``: one gather kernel that picks each token's row from
  the shard holding it, and as tied LM head one linear function per shard, logits concatenated.

It returns where each new parameter's rows come from (recorded in the manifest as
``extra.param_splits``), so ``compile/reshard.py`` cuts the converted weights the same way; the network's
other code is unchanged (it calls the replaced layers as before).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from compile.model.layers import Embedding, QLinear, linear
from compile.reshard import Layout
from ferrum.errors import ModelSourceError
from ferrum.quantization import QuantSpec


def _nbytes(p: nn.Parameter) -> int:
    return math.prod(int(d) for d in p.shape) * np.dtype(str(p.dtype)).itemsize


def _shard_rows(rows: int, row_bytes: int, limit: int) -> list[int]:
    """Row counts of the fewest equal shards (the last may be shorter) whose bytes fit ``limit``."""
    per = limit // row_bytes
    if per == 0:
        raise ModelSourceError(f"one row of {row_bytes} bytes exceeds the storage-binding limit of {limit} bytes")
    count = math.ceil(rows / per)
    size = math.ceil(rows / count)
    return [min(size, rows - start) for start in range(0, rows, size)]


class SplitLinear(nn.Module):
    """A linear layer stored as shards of output rows; the output is the shards' outputs concatenated."""

    def __init__(self, in_features: int, rows: list[int], spec: QuantSpec, bias: bool):
        self.parts = nn.ModuleList([QLinear(in_features, n, spec, bias=bias) for n in rows])

    def forward(self, x: Tensor) -> Tensor:
        return op.concat([part(x) for part in self.parts], dim=-1)


class ShardedEmbedding(nn.Module):
    """An embedding table stored as shards of vocabulary rows."""

    def __init__(self, rows: list[int], dim: int, dtype: str):
        self.shards = nn.ModuleList([Embedding(n, dim, dtype) for n in rows])
        self.starts = [sum(rows[:i]) for i in range(len(rows))]
        self.rows, self.dim = rows, dim

    def forward(self, ids: Tensor) -> Tensor:
        starts, rows, dim = self.starts, self.rows, self.dim

        def gather(ids: te.Tensor, *tables: te.Tensor) -> te.Tensor:
            def row(i, d):
                tok = ids[i]
                # indices are clamped into every shard: a WGSL select may evaluate both sides
                value = tables[-1][tirx.max(tirx.min(tok - starts[-1], rows[-1] - 1), 0), d]
                for start, n, table, end in reversed(list(zip(starts, rows, tables, starts[1:], strict=False))):
                    value = tirx.if_then_else(tok < end, table[tirx.max(tirx.min(tok - start, n - 1), 0), d], value)
                return value

            return te.compute((ids.shape[0], dim), row, name="take_sharded")

        return op.tensor_expr_op(gather, "take_sharded", [ids, *(s.weight for s in self.shards)])

    def lm_head(self, x: Tensor, spec: QuantSpec) -> Tensor:
        """Float32 logits, one linear function per shard (as ``Embedding.lm_head``)."""
        return op.concat([linear(x, [s.weight], spec, "float32") for s in self.shards], dim=-1)


def _split_linear(layer: QLinear, limit: int) -> SplitLinear | None:
    params = [p for p in (*layer.weights(), layer.bias) if p is not None]
    if all(_nbytes(p) <= limit for p in params):
        return None
    if layer.spec.interleave:
        raise ModelSourceError(f"{layer.spec.name} weights are row-interleaved for CPUs and cannot be split")
    out_features = int(params[0].shape[0])
    row_bytes = max(_nbytes(p) // out_features for p in params)
    in_features = int(layer.weights()[0].shape[1]) * (8 if layer.spec.weight_bits == 4 else 1)
    return SplitLinear(in_features, _shard_rows(out_features, row_bytes, limit), layer.spec, layer.bias is not None)


def _split_embedding(table: Embedding, limit: int) -> ShardedEmbedding | None:
    if _nbytes(table.weight) <= limit:
        return None
    vocab, dim = (int(d) for d in table.weight.shape)
    rows = _shard_rows(vocab, _nbytes(table.weight) // vocab, limit)
    return ShardedEmbedding(rows, dim, str(table.weight.dtype))


def _layout_of(prefix: str, old: nn.Module, new: SplitLinear | ShardedEmbedding) -> Layout:
    parts = new.parts if isinstance(new, SplitLinear) else new.shards
    group = "parts" if isinstance(new, SplitLinear) else "shards"
    layout, start = {}, 0
    old_names = [name for name, _ in old.named_parameters()]
    for i, part in enumerate(parts):
        rows = int(next(iter(part.parameters())).shape[0])
        for name in old_names:
            layout[f"{prefix}{group}.{i}.{name}"] = (f"{prefix}{name}", start, start + rows)
        start += rows
    return layout


def _children(module: nn.Module) -> Iterator[tuple[str, nn.Module, object]]:
    """(name, child, key) for each direct submodule; ``key`` sets it back (an attribute or list index)."""
    if isinstance(module, nn.ModuleList):
        for i, child in enumerate(module.modules):
            yield str(i), child, i
        return
    for name, value in list(vars(module).items()):
        if isinstance(value, nn.Module):
            yield name, value, name


def split_oversized(model: nn.Module, limit: int) -> Layout:
    """Replace ``model``'s linear layers and embeddings holding a parameter over ``limit`` bytes
    by row shards (in place) and return the new parameters' layout; raise if a parameter of
    another kind is still too large."""
    layout: Layout = {}

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child, key in _children(module):
            path = f"{prefix}{name}."
            new = (_split_linear(child, limit) if isinstance(child, QLinear)
                   else _split_embedding(child, limit) if isinstance(child, Embedding) else None)
            if new is None:
                visit(child, path)
                continue
            layout.update(_layout_of(path, child, new))
            if isinstance(key, int):
                module.modules[key] = new
            else:
                setattr(module, key, new)

    visit(model, "")
    too_big = [name for name, p in model.named_parameters() if _nbytes(p) > limit]
    if too_big:
        raise ModelSourceError(f"parameters larger than the storage-binding limit ({limit} bytes) that Ferrum cannot "
                               f"split yet: {', '.join(too_big[:4])}")
    return layout
