"""Linear and embedding layers for each quantization scheme.

``q0*`` layers hold plain weights. ``q4f16`` layers hold int4 weights packed eight to a
``uint32`` with one float16 scale and one float16 minimum per group of 32 (asymmetric, like
GGUF's ``Q4_1``, which it reproduces exactly; see ``compile/quantize.py``); ``q4f32`` holds the
same values with output rows interleaved by 16 for the CPU GEMV. Every linear layer is ONE TensorIR function: for int4 a dequantize block feeds the
product block, and the GPU (dlight GEMV/Matmul) and CPU schedules inline it, so int4 weights are
read once and never materialized in fp16. Weights stay in their (out, in) layout, so no transpose
runs at inference time. Accumulation is in float32 for every scheme: fp16 sums over
1536..14336 products lose digits.
"""

from __future__ import annotations

from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from ferrum.quantization import QuantSpec

Q4_PER_WORD = 8


def q4_value(word, k, scale, low, dtype: str):
    """The float value of element ``k`` of a row, given that row's packed word, group scale and minimum."""
    shift = (k % Q4_PER_WORD * 4).astype("uint32")
    nibble = tirx.bitwise_and(tirx.shift_right(word, shift), tirx.const(15, "uint32"))
    return nibble.astype(dtype) * scale + low


LINEAR_BLOCK = "ferrum_linear"
# The product block of row-interleaved int4 weights (q4f32); the CPU schedules it over output rows.
LINEAR_INTERLEAVED_BLOCK = "ferrum_linear_interleaved"
# The product block of an expert gather (compile/model/qwen3_moe.py); the CUDA schedule finds it by name.
EXPERT_BLOCK = "ferrum_expert_linear"


def linear(x: Tensor, weights: list[Tensor], spec: QuantSpec, out_dtype: str) -> Tensor:
    """``x @ W.T`` as one TensorIR function, W kept in its stored (out, in) layout.

    ``weights`` is ``[weight]`` for ``q0*``, ``[q_weight, q_scale, q_min]`` for int4 or
    ``[q_weight, q_scale]`` for int8 (row-interleaved only; then a ``dequantize`` block precedes the product). The product block is named ``LINEAR_BLOCK`` so
    the CPU schedule rule (``compile/schedules/cpu.py``) can find it; it accumulates in float32
    and a final block casts to ``out_dtype``.
    """
    group, dtype, per = spec.group_size, spec.model_dtype, spec.interleave
    bits = spec.weight_bits
    interleaved = spec.quantized and per > 0
    per_word = Q4_PER_WORD if bits == 4 else 1
    if interleaved and bits == 8:  # (out / per, in / 4, per * 4), see compile/quantize.py
        n_out, n_in = int(weights[0].shape[0]) * per, int(weights[0].shape[1]) * 4
    elif interleaved:  # (out / per, in / 8, per)
        n_out, n_in = int(weights[0].shape[0]) * per, int(weights[0].shape[1]) * per_word
    else:
        n_out, n_in = int(weights[0].shape[0]), int(weights[0].shape[1]) * per_word

    def fused(x: te.Tensor, *ws: te.Tensor) -> te.Tensor:
        if interleaved and bits == 8:
            qw, qs = ws
            # (out / per, in / 4, per * 4), inputs of every 8 stored as 0,2,4,6,1,3,5,7 (compile/quantize.py)
            w = te.compute(
                (n_out, n_in),
                lambda i, k: qw[i // per, k // 8 * 2 + k % 2, i % per * 4 + k % 8 // 2].astype(dtype)
                * qs[i // per, k // group, i % per],
                name="dequantize",
            )
        elif interleaved:
            qw, qs, qm = ws
            w = te.compute(
                (n_out, n_in),
                lambda i, k: q4_value(qw[i // per, k // Q4_PER_WORD, i % per], k, qs[i // per, k // group, i % per],
                                       qm[i // per, k // group, i % per], dtype),
                name="dequantize",
            )
        elif spec.quantized:
            qw, qs, qm = ws
            w = te.compute(
                (n_out, n_in),
                lambda i, k: q4_value(qw[i, k // Q4_PER_WORD], k, qs[i, k // group], qm[i, k // group], dtype),
                name="dequantize",
            )
        else:
            (w,) = ws
        k = te.reduce_axis((0, n_in), name="k")
        acc = te.compute(
            (*x.shape[:-1], n_out),
            lambda *idx: te.sum(x[(*idx[:-1], k)].astype("float32") * w[idx[-1], k].astype("float32"), axis=k),
            name=LINEAR_INTERLEAVED_BLOCK if interleaved else LINEAR_BLOCK,
        )
        if out_dtype == "float32":
            return acc
        return te.compute(acc.shape, lambda *idx: acc[idx].astype(out_dtype), name="cast")

    return op.tensor_expr_op(fused, "linear", [x, *weights])


class QLinear(nn.Module):
    """``y = x @ W.T (+ b)`` with W stored per ``QuantSpec``; input, output and bias in the model dtype
    (a bias is never quantized; it is added in the linear function's epilogue)."""

    def __init__(self, in_features: int, out_features: int, spec: QuantSpec, bias: bool = False):
        self.spec = spec
        if spec.quantized:
            if in_features % spec.group_size:
                raise ValueError(f"in_features {in_features} is not a multiple of group {spec.group_size}")
            per = spec.interleave
            if per and out_features % per:
                raise ValueError(f"{spec.name} interleaves output rows by {per}; out_features {out_features} is not a multiple")
            if spec.weight_bits == 8 and not per:
                raise ValueError("int8 linear layers are only built row-interleaved (q4f32's LM head)")
            lead, tail = ((out_features // per,), (per,)) if per else ((out_features,), ())
            if spec.weight_bits == 8:  # four inputs of a row per 32-bit lane (compile/quantize.py)
                self.q_weight = nn.Parameter((out_features // per, in_features // 4, per * 4), "int8")
            else:
                self.q_weight = nn.Parameter((*lead, in_features // Q4_PER_WORD, *tail), "uint32")
            self.q_scale = nn.Parameter((*lead, in_features // spec.group_size, *tail), spec.model_dtype)
            if spec.weight_bits == 4:
                self.q_min = nn.Parameter((*lead, in_features // spec.group_size, *tail), spec.model_dtype)
        else:
            self.weight = nn.Parameter((out_features, in_features), spec.model_dtype)
        self.bias = nn.Parameter((out_features,), spec.model_dtype) if bias else None

    def weights(self) -> list[Tensor]:
        if not self.spec.quantized:
            return [self.weight]
        return [self.q_weight, self.q_scale] + ([self.q_min] if self.spec.weight_bits == 4 else [])

    def forward(self, x: Tensor) -> Tensor:
        y = linear(x, self.weights(), self.spec, self.spec.model_dtype)
        return y if self.bias is None else y + self.bias


class Embedding(nn.Module):
    """Token embedding table in the model dtype, optionally reused as the LM head (tied embeddings).

    Never int4, whatever the scheme: the table and the LM head are the layers most sensitive to
    quantization (GGUF files keep them at 8 bits or more; AWQ/GPTQ keep them in float16), and
    SmolLM2's answers change when they are rounded to 4 bits."""

    def __init__(self, vocab_size: int, dim: int, dtype: str):
        self.weight = nn.Parameter((vocab_size, dim), dtype)

    def forward(self, ids: Tensor) -> Tensor:
        return op.take(self.weight, ids, axis=0)

    def lm_head(self, x: Tensor, spec: QuantSpec) -> Tensor:
        """Float32 logits from hidden states, using this table as the output projection."""
        return linear(x, [self.weight], spec, "float32")
