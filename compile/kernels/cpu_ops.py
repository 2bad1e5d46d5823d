"""Ferrum's CPU kernels (``cpu/ferrum_cpu.cc``) as ``tvm.relax.frontend.nn`` operators.

q4f32 Llama blocks on a CPU with AVX-512 VNNI run as four fused kernels around attention
(RMSNorm+QKV, O-projection+residual, RMSNorm+gate/up+SwiGLU, down-projection+residual) and the
final norm folded into the int8 LM head, each ONE parallel region of TVM's thread pool, and the
paged KV cache's prefill (new tokens among themselves) and decode attention are Ferrum's
(``install_attention_kernels``); see the
C++ file for the arithmetic. The object is compiled with g++ at compile time (cached under
``build/kernels`` by source and flags) and linked into model.so like the CUDA kernels; the
manifest then lists ``CPU_KERNEL_FEATURES`` so the runtime refuses a CPU without them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import tvm_ffi
from tvm import relax, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor
from tvm.relax.frontend.nn.core import wrap_nested
from tvm.relax.frontend.nn.exporter import Exporter

from compile.cxx import compile_cxx
from compile.kernels.block_gate import block_departures
from ferrum.errors import FerrumError
from ferrum.model_config import DecoderConfig
from ferrum.quantization import QuantSpec

SOURCE = Path(__file__).resolve().parent / "cpu" / "ferrum_cpu.cc"
CACHE_DIR = Path(__file__).resolve().parents[2] / "build" / "kernels"
# /proc/cpuinfo flags the kernels are compiled for (x86-64-v4 plus VNNI).
CPU_KERNEL_FEATURES = ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni")
FLAGS = ["-O3", "-std=c++17", "-fPIC", "-fvisibility=hidden", "-march=x86-64-v4", "-mavx512vnni"]
ROWS = 16  # output rows per tile: the q4f32 interleave the kernels read


def cpu_kernel_blockers(cfg: DecoderConfig, quant: QuantSpec, cpu_flags: set[str]) -> list[str]:
    """Why these kernels cannot run ``cfg``'s blocks in ``quant`` on a CPU with ``cpu_flags`` (empty: they can).

    They take q4f32 (int4 Q4_1 blocks interleaved by 16 rows, int8 head), widths that are
    multiples of 32 (inputs) and 16 (outputs) and exactly a Llama block (``block_departures``)."""
    blockers = []
    if quant.name != "q4f32":
        blockers.append(f"{quant.name} (the kernels take q4f32)")
    missing = [f for f in CPU_KERNEL_FEATURES if f not in cpu_flags]
    if missing:
        blockers.append(f"a CPU without {', '.join(missing)}")
    widths = (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads * cfg.head_dim)
    qkv_rows = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim
    if any(w % 32 for w in widths) or cfg.vocab_size % ROWS or qkv_rows % ROWS:
        blockers.append("layer widths that are not multiples of 32 (inputs) and 16 (outputs)")
    return blockers + block_departures(cfg)


def _compile(kind: str) -> Path:
    """The kernels as an object (``o``, linked into model.so) or a shared library (``so``, for tests)."""
    includes = ["-I", tvm_ffi.libinfo.find_include_path(), "-I", tvm_ffi.libinfo.find_dlpack_include_path()]
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join([kind, *FLAGS]).encode()).hexdigest()[:20]
    out = CACHE_DIR / f"ferrum_cpu-{digest}.{kind}"
    mode = ["-c"] if kind == "o" else ["-shared"]
    return compile_cxx(out, SOURCE, [*mode, *FLAGS, *includes], "Ferrum's CPU kernels")


def build_cpu_object() -> Path:
    return _compile("o")


def build_cpu_shared() -> Path:
    """A standalone library exporting the same functions (loaded by tests next to TVM's runtime)."""
    return _compile("so")


def _out(x: Tensor, width) -> Tensor:
    return Tensor.placeholder([*x.shape[:-1], width], "float32")


SYMBOLS = {
    "ferrum_cpu_norm_linear_q4": lambda x, g, qw, qs, qm, eps: _out(x, qw.shape[0] * ROWS),
    "ferrum_cpu_linear_res_q4": lambda x, qw, qs, qm, res: _out(x, qw.shape[0] * ROWS),
    "ferrum_cpu_norm_gate_up_q4": lambda x, g, qw, qs, qm, eps: _out(x, qw.shape[0] * ROWS // 2),
    "ferrum_cpu_norm_logits_q8": lambda x, g, qw, qs, eps: _out(x, qw.shape[0] * ROWS),
    # handed to the paged KV cache (install_attention_kernels), not called from the graph
    "ferrum_cpu_attention_prefill_ragged": None,
    "ferrum_cpu_attention_decode_paged": None,
}


def _relax_arg(arg: Tensor | float) -> relax.Expr:
    if isinstance(arg, Tensor):
        return arg._expr
    return relax.prim_value(tirx.FloatImm("float64", float(arg)))


class CpuKernels:
    """The fused q4f32 operators over the kernel object (the interface of ``CudaKernels``'s block
    operators, so the Llama network calls either the same way; no device sampler)."""

    samples_on_device = False
    # the paged KV cache's decode attention (argument position of paged_attention_kv_cache_create)
    attention_slots = {16: ("prefill_ragged", "ferrum_cpu_attention_prefill_ragged"),
                       18: ("decode_paged_kv", "ferrum_cpu_attention_decode_paged")}
    rope_glue = None

    def __init__(self) -> None:
        self.module = nn.ObjectModule({name: None for name in SYMBOLS}, build_cpu_object())

    @staticmethod
    def blockers(cfg: DecoderConfig, quant: QuantSpec) -> list[str]:
        return cpu_kernel_blockers(cfg, quant, set(CPU_KERNEL_FEATURES))

    def _call(self, name: str, *args) -> Tensor:
        exporter = Exporter.current()
        if self.module not in exporter.extern_mods:
            nn.add_extern(self.module)
        out = SYMBOLS[name](*args)
        inputs = relax.Tuple([_relax_arg(a) for a in args])
        return wrap_nested(relax.op.call_dps_packed(name, inputs, out._expr.ty), name)

    def linear(self, x: Tensor, weights: list[Tensor], residual: Tensor | None = None) -> Tensor:
        """``x @ W.T + residual`` (int4 W; the Llama block has no plain projection)."""
        if residual is None or len(weights) != 3:
            raise FerrumError("internal error: the CPU kernels take int4 projections with a residual only")
        return self._call("ferrum_cpu_linear_res_q4", x, *weights, residual)

    def norm_linear(self, x: Tensor, norm_weight: Tensor, eps: float, weights: list[Tensor]) -> Tensor:
        """``rmsnorm(x) @ W.T`` (int4 W)."""
        return self._call("ferrum_cpu_norm_linear_q4", x, norm_weight, *weights, eps)

    def norm_gate_up(self, x: Tensor, norm_weight: Tensor, eps: float, weights: list[Tensor]) -> Tensor:
        """``silu(h @ Wg.T) * (h @ Wu.T)`` with ``h = rmsnorm(x)``, W = [Wg; Wu] (int4)."""
        return self._call("ferrum_cpu_norm_gate_up_q4", x, norm_weight, *weights, eps)

    def norm_logits(self, x: Tensor, norm_weight: Tensor, eps: float, weights: list[Tensor]) -> Tensor:
        """Float32 logits ``rmsnorm(x) @ W.T`` over the int8 LM head ``[q_weight, q_scale]``."""
        if len(weights) != 2:
            raise FerrumError("internal error: the CPU kernels take the int8 (q4f32) LM head")
        return self._call("ferrum_cpu_norm_logits_q8", x, norm_weight, *weights, eps)

