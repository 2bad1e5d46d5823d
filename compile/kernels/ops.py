"""The CUDA kernels as ``tvm.relax.frontend.nn`` operators (``call_dps_packed`` into model.so).

Each operator is one fused step of a Llama block; the C++ entry point picks the GEMV (<= 8 rows)
or the tensor-core GEMM path at run time. Operators that need temporary memory on the GEMM path
(normalized activations, the gate/up product, int4 weights dequantized to fp16) return a
``scratch`` tensor as a second output, so Relax's memory planner owns and reuses that memory and
CUDA-graph capture sees only planned buffers.
"""

from __future__ import annotations

from tvm import relax, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor
from tvm.relax.frontend.nn.core import wrap_nested
from tvm.relax.frontend.nn.exporter import Exporter

from compile.kernels.build import build_object
from compile.model.layers import Q4_PER_WORD

SAMPLE_PARAMS = 5  # temperature, top_p, top_k, min_p, uniform (see cuda/sampling.cuh)


def _relax_arg(arg: Tensor | float) -> relax.Expr:
    if isinstance(arg, Tensor):
        return arg._expr
    return relax.prim_value(tirx.FloatImm("float64", float(arg)))


def _rows(x: Tensor) -> tirx.PrimExpr:
    rows = 1
    for d in x.shape[:-1]:
        rows = rows * d
    return rows


def _out(x: Tensor, width, dtype: str = "float16") -> Tensor:
    return Tensor.placeholder([*x.shape[:-1], width], dtype)


def _scratch(halves) -> Tensor:
    return Tensor.placeholder([halves], "float16")


def _k(x: Tensor):
    return x.shape[-1]


def _q4_k(qw: Tensor):
    return qw.shape[1] * Q4_PER_WORD


SYMBOLS = {
    "ferrum_linear_f16": lambda x, w: _out(x, w.shape[0]),
    "ferrum_linear_res_f16": lambda x, w, res: _out(x, w.shape[0]),
    "ferrum_norm_linear_f16": lambda x, g, w, eps: (_out(x, w.shape[0]), _scratch(_rows(x) * _k(x))),
    "ferrum_norm_logits_f16": lambda x, g, w, eps: (_out(x, w.shape[0], "float32"), _scratch(_rows(x) * _k(x))),
    "ferrum_norm_gate_up_f16": lambda x, g, w, eps: (
        _out(x, w.shape[0] // 2), _scratch(_rows(x) * (_k(x) + w.shape[0]))),
    "ferrum_linear_q4": lambda x, qw, qs, qm: (_out(x, qw.shape[0]), _scratch(qw.shape[0] * _q4_k(qw))),
    "ferrum_linear_res_q4": lambda x, qw, qs, qm, res: (_out(x, qw.shape[0]), _scratch(qw.shape[0] * _q4_k(qw))),
    "ferrum_norm_linear_q4": lambda x, g, qw, qs, qm, eps: (
        _out(x, qw.shape[0]), _scratch(qw.shape[0] * _q4_k(qw) + _rows(x) * _k(x))),
    "ferrum_norm_gate_up_q4": lambda x, g, qw, qs, qm, eps: (
        _out(x, qw.shape[0] // 2), _scratch(qw.shape[0] * _q4_k(qw) + _rows(x) * (_k(x) + qw.shape[0]))),
    "ferrum_sample_tokens": lambda logits, params: Tensor.placeholder([_rows(logits)], "int32"),
}


class CudaKernels:
    """The kernel object for one build's architectures, and the fused operators over it."""

    def __init__(self, archs: tuple[str, ...]):
        self.module = nn.ObjectModule(SYMBOLS, build_object(archs))

    def _call(self, name: str, *args):
        """``call_dps_packed`` of one kernel symbol (``nn.ExternModule.__getitem__`` in TVM 0.27
        cannot declare several outputs, so the call is built here)."""
        if self.module not in Exporter.current().extern_mods:
            nn.add_extern(self.module)
        outputs = SYMBOLS[name](*args)
        types = [t._expr.ty for t in outputs] if isinstance(outputs, tuple) else outputs._expr.ty
        inputs = relax.Tuple([_relax_arg(a) for a in args])
        return wrap_nested(relax.op.call_dps_packed(name, inputs, types), name)

    def linear(self, x: Tensor, weights: list[Tensor], residual: Tensor | None = None) -> Tensor:
        """``x @ W.T`` (+ ``residual``), float16 out."""
        if len(weights) == 1:
            if residual is None:
                return self._call("ferrum_linear_f16", x, weights[0])
            return self._call("ferrum_linear_res_f16", x, weights[0], residual)
        if residual is None:
            return self._call("ferrum_linear_q4", x, *weights)[0]
        return self._call("ferrum_linear_res_q4", x, *weights, residual)[0]

    def norm_linear(self, x: Tensor, norm_weight: Tensor, eps: float, weights: list[Tensor]) -> Tensor:
        """``rmsnorm(x) @ W.T``, float16 out."""
        if len(weights) == 1:
            return self._call("ferrum_norm_linear_f16", x, norm_weight, weights[0], eps)[0]
        return self._call("ferrum_norm_linear_q4", x, norm_weight, *weights, eps)[0]

    def norm_logits(self, x: Tensor, norm_weight: Tensor, eps: float, weight: Tensor) -> Tensor:
        """Float32 logits ``rmsnorm(x) @ W.T`` (the LM head is never quantized)."""
        return self._call("ferrum_norm_logits_f16", x, norm_weight, weight, eps)[0]

    def norm_gate_up(self, x: Tensor, norm_weight: Tensor, eps: float, weights: list[Tensor]) -> Tensor:
        """SwiGLU input: ``silu(h @ Wg.T) * (h @ Wu.T)`` with ``h = rmsnorm(x)``, W = [Wg; Wu]."""
        if len(weights) == 1:
            return self._call("ferrum_norm_gate_up_f16", x, norm_weight, weights[0], eps)[0]
        return self._call("ferrum_norm_gate_up_q4", x, norm_weight, *weights, eps)[0]

    def sample(self, logits: Tensor, params: Tensor) -> Tensor:
        """Token ids (int32, one per row) from float32 logits and per-row sampling parameters."""
        return self._call("ferrum_sample_tokens", logits, params)
