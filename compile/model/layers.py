"""Linear and embedding layers for each quantization scheme.

``q0*`` layers hold plain weights. ``q4f16`` layers hold int4 weights packed eight to a
``uint32`` with one float16 scale and one float16 minimum per group of 32 (asymmetric, like
GGUF's ``Q4_1``, which it reproduces exactly; see ``compile/quantize.py``). Every linear layer is ONE TensorIR function: for int4 a dequantize block feeds the
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


def _q4_value(word, k, scale, low, dtype: str):
    """The float value of element ``k`` of a row, given that row's packed word, group scale and minimum."""
    shift = (k % Q4_PER_WORD * 4).astype("uint32")
    nibble = tirx.bitwise_and(tirx.shift_right(word, shift), tirx.const(15, "uint32"))
    return nibble.astype(dtype) * scale + low


LINEAR_BLOCK = "ferrum_linear"


def linear(x: Tensor, weights: list[Tensor], spec: QuantSpec, out_dtype: str) -> Tensor:
    """``x @ W.T`` as one TensorIR function, W kept in its stored (out, in) layout.

    ``weights`` is ``[weight]`` for ``q0*`` or ``[q_weight, q_scale, q_min]`` for ``q4*`` (then a
    ``dequantize`` block precedes the product). The product block is named ``LINEAR_BLOCK`` so
    the CPU schedule rule (``compile/schedules/cpu.py``) can find it; it accumulates in float32
    and a final block casts to ``out_dtype``.
    """
    n_out = int(weights[0].shape[0])
    n_in = int(weights[0].shape[1]) * (Q4_PER_WORD if spec.quantized else 1)
    group, dtype = spec.group_size, spec.model_dtype

    def fused(x: te.Tensor, *ws: te.Tensor) -> te.Tensor:
        if spec.quantized:
            qw, qs, qm = ws
            w = te.compute(
                (n_out, n_in),
                lambda i, k: _q4_value(qw[i, k // Q4_PER_WORD], k, qs[i, k // group], qm[i, k // group], dtype),
                name="dequantize",
            )
        else:
            (w,) = ws
        k = te.reduce_axis((0, n_in), name="k")
        acc = te.compute(
            (*x.shape[:-1], n_out),
            lambda *idx: te.sum(x[(*idx[:-1], k)].astype("float32") * w[idx[-1], k].astype("float32"), axis=k),
            name=LINEAR_BLOCK,
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
            self.q_weight = nn.Parameter((out_features, in_features // Q4_PER_WORD), "uint32")
            self.q_scale = nn.Parameter((out_features, in_features // spec.group_size), spec.model_dtype)
            self.q_min = nn.Parameter((out_features, in_features // spec.group_size), spec.model_dtype)
        else:
            self.weight = nn.Parameter((out_features, in_features), spec.model_dtype)
        self.bias = nn.Parameter((out_features,), spec.model_dtype) if bias else None

    def weights(self) -> list[Tensor]:
        return [self.q_weight, self.q_scale, self.q_min] if self.spec.quantized else [self.weight]

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
