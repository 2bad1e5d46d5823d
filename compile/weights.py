"""Turn a source's Hugging Face tensors into the artifact's parameters.

Pure numpy, no TVM: a machine with only the TVM runtime can regenerate an artifact's weights
from the same source and check them against the manifest's hashes.

Each architecture's mapping (``compile/model/<name>_hf.py``) plans its parameters: which
checkpoint tensors are concatenated (rows) into each one, e.g. Q/K/V into ``qkv_proj`` and
gate/up into ``gate_up_proj`` (one matmul each, as the compiled model expects), with the shapes
its config implies. Here they are checked, cast to the model dtype, and linear weights quantized
when the scheme asks for it (embeddings, the LM head, norms and biases stay in the model dtype).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from compile.model.architectures import get_architecture
from compile.quantize import interleave_q8_rows, interleave_rows, quantize_q4, quantize_q8
from ferrum.errors import ModelSourceError
from ferrum.model_config import DecoderConfig
from ferrum.quantization import QuantSpec

if TYPE_CHECKING:
    from compile.sources.base import DecoderSource

KINDS = ("linear", "dense", "norm", "bias")  # only "linear" weights (and LM_HEAD, see QuantSpec.head_bits) are quantized
EMBEDDINGS, LM_HEAD = "embed_tokens", "lm_head"  # parameter names every decoder network uses


@dataclass(frozen=True)
class WeightPlan:
    """One artifact parameter: the checkpoint tensors concatenated (rows) to make it, the shape the
    config implies for each, and its kind (one of ``KINDS``)."""

    name: str  # the parameter's module path; ".weight"/".bias"/".q_weight"... is appended
    sources: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    kind: str
    offset: float = 0.0  # added to the checkpoint's values (Gemma's RMSNorm scales by 1 + weight)

    def __post_init__(self) -> None:
        if self.kind not in KINDS or len(self.sources) != len(self.shapes):
            raise ValueError(f"malformed weight plan entry {self}")


@dataclass(frozen=True)
class HFMapping:
    """How one architecture's Hugging Face checkpoints map onto its network."""

    read_config: Callable[[dict[str, Any], Path], DecoderConfig]  # config.json (and its folder, for errors)
    plan: Callable[[DecoderConfig], list[WeightPlan]]  # every parameter in the network's call order


def convert_weights(source: DecoderSource, quant: QuantSpec) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (parameter name, array) for every parameter of the compiled model, in plan order."""
    cfg = source.config
    plan = get_architecture(cfg.architecture).hf_mapping().plan(cfg)
    if quant.head_bits and cfg.tie_word_embeddings:  # the network then holds its own quantized LM head
        embed = next(item for item in plan if item.name == EMBEDDINGS)
        plan.append(WeightPlan(LM_HEAD, embed.sources, embed.shapes, "dense"))
    missing = sorted({name for item in plan for name in item.sources} - source.tensor_names())
    if missing:
        raise ModelSourceError(f"{source.path}: {len(missing)} tensors missing, e.g. {missing[0]}")
    for item in plan:
        parts = []
        for name, shape in zip(item.sources, item.shapes, strict=True):
            w = source.tensor(name)
            if tuple(w.shape) != shape:
                raise ModelSourceError(f"{source.path}: {name} has shape {w.shape}, config implies {shape}")
            parts.append(w)
        w = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        if item.offset:
            w = w + np.float32(item.offset)
        if item.name == LM_HEAD and quant.head_bits:
            head = quant.head()
            q, scale = quantize_q8(w, head.group_size)
            if head.interleave:
                q, scale = interleave_q8_rows(q, head.interleave), interleave_rows(scale, head.interleave)
            yield f"{item.name}.q_weight", q
            yield f"{item.name}.q_scale", scale.astype(quant.model_dtype)
        elif item.kind == "linear" and quant.quantized:
            packed, scale, low = quantize_q4(w, quant.group_size)
            if quant.interleave:
                packed, scale, low = (interleave_rows(a, quant.interleave) for a in (packed, scale, low))
            yield f"{item.name}.q_weight", packed
            yield f"{item.name}.q_scale", scale.astype(quant.model_dtype)
            yield f"{item.name}.q_min", low.astype(quant.model_dtype)
        else:
            suffix = "bias" if item.kind == "bias" else "weight"
            yield f"{item.name}.{suffix}", w.astype(quant.model_dtype)
