"""The CUDA kernels as ``tvm.relax.frontend.nn`` operators (``call_dps_packed`` into model.so).

Each operator is one fused step of a Llama block; the C++ entry point picks the GEMV (<= 8 rows)
or the tensor-core GEMM path at run time. Operators that need temporary memory on the GEMM path
(normalized activations, the gate/up product, int4 weights dequantized to fp16) return a
``scratch`` tensor as a second output, so Relax's memory planner owns and reuses that memory and
CUDA-graph capture sees only planned buffers.
"""

from __future__ import annotations

from tvm import relax, tirx
from tvm.ir import IRModule
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor
from tvm.relax.frontend.nn.core import wrap_nested
from tvm.relax.frontend.nn.exporter import Exporter

from compile.kernels.block_gate import block_departures
from compile.kernels.build import build_object, build_rope_glue
from compile.model.layers import Q4_PER_WORD
from ferrum.errors import FerrumError
from ferrum.model_config import DecoderConfig
from ferrum.quantization import QuantSpec

HEAD_DIMS = (64, 128)
# What a network built with these kernels exports besides ``ferrum.manifest.LLM_FUNCTIONS``:
# ``sample_tokens(logits[b, vocab], params[b, len(SAMPLE_PARAMS)]) -> ids[b]`` (GPU sampling) and
# ``sample_tokens_masked(logits, params, masks[b, ceil(vocab / 32)] int32) -> ids[b]``, the same
# under a grammar bitmask per row (llguidance's layout). An artifact built before the masked one
# existed lacks it in ``manifest.functions``: the runtime then samples constrained steps on the host.
SAMPLER_FUNCTIONS = ("sample_tokens", "sample_tokens_masked")


def kernel_blockers(cfg: DecoderConfig, quant: QuantSpec) -> list[str]:
    """Why these kernels cannot run a decoder block of ``cfg`` (empty: they can).

    They take float16 activations, input widths that are multiples of 32, output widths that are
    multiples of 8 and head dims of 64 or 128, and fuse exactly a Llama block: RMSNorm, SwiGLU,
    full causal attention, no output or MLP biases. A q/k/v bias and q/k norm (Qwen2, Qwen3) are
    TVM ops between the QKV kernel and attention (``LlamaDecoderLayer``), so they block nothing."""
    blockers = []
    if quant.model_dtype != "float16":
        blockers.append(f"{quant.name} computes in {quant.model_dtype} (the kernels take float16)")
    if cfg.head_dim not in HEAD_DIMS:
        blockers.append(f"head dim {cfg.head_dim} (the kernels take {' or '.join(map(str, HEAD_DIMS))})")
    widths = (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads * cfg.head_dim)
    qkv_rows = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim
    if any(w % 32 for w in widths) or cfg.vocab_size % 8 or qkv_rows % 8:
        blockers.append("layer widths that are not multiples of 32 (inputs) and 8 (outputs)")
    return blockers + block_departures(cfg, qkv_extras=True)



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
    "ferrum_norm_gate_up_f16": lambda x, g, w, eps: (_out(x, w.shape[0] // 2), _scratch(_rows(x) * _k(x))),
    "ferrum_linear_q4": lambda x, qw, qs, qm: (_out(x, qw.shape[0]), _scratch(qw.shape[0] * _q4_k(qw))),
    "ferrum_linear_res_q4": lambda x, qw, qs, qm, res: (_out(x, qw.shape[0]), _scratch(qw.shape[0] * _q4_k(qw))),
    "ferrum_norm_linear_q4": lambda x, g, qw, qs, qm, eps: (
        _out(x, qw.shape[0]), _scratch(qw.shape[0] * _q4_k(qw) + _rows(x) * _k(x))),
    "ferrum_norm_gate_up_q4": lambda x, g, qw, qs, qm, eps: (
        _out(x, qw.shape[0] // 2), _scratch(qw.shape[0] * _q4_k(qw) + _rows(x) * _k(x))),
    "ferrum_sample_tokens": lambda logits, params: Tensor.placeholder([_rows(logits)], "int32"),
    "ferrum_sample_tokens_masked": lambda logits, params, masks: Tensor.placeholder([_rows(logits)], "int32"),
    # not called from the graph: handed to the paged KV cache (see install_attention_kernels)
    "ferrum_attention_prefill_ragged": None,
    "ferrum_attention_decode_paged": None,
}
KV_CACHE_CREATE = "vm.builtin.paged_attention_kv_cache_create"
# paged_attention_kv_cache_create's arguments (TVM 0.27): position -> (TVM function name part, ours)
KV_CACHE_SLOTS = {16: ("prefill_ragged", "ferrum_attention_prefill_ragged"),
                  18: ("decode_paged_kv", "ferrum_attention_decode_paged")}
SPLIT_ROTARY_SLOT = (25, "fused_rope", "ferrum_split_rotary")


def is_kv_cache_create(expr: relax.Expr) -> bool:
    """Whether ``expr`` is the call that creates a paged KV cache (``call_pure_packed`` of
    ``KV_CACHE_CREATE``): the one place its kernel arguments can be read or replaced."""
    head = expr.args[0] if isinstance(expr, relax.Call) and expr.args else None
    return isinstance(head, relax.ExternFunc) and head.global_symbol == KV_CACHE_CREATE


class CudaKernels:
    """The kernel object for one build's architectures, and the fused operators over it.

    ``rope``: (theta, position scale) of a model with default (unscaled) rotate-half RoPE over
    the whole head; its KV cache then also gets the split-rotary kernel (see
    ``install_attention_kernels``). Other RoPE variants keep TVM's."""

    samples_on_device = True  # exports sample_tokens (SAMPLER_FUNCTIONS)
    attention_slots = KV_CACHE_SLOTS  # the paged KV cache's kernels these replace

    def __init__(self, archs: tuple[str, ...], rope: tuple[float, float] | None = None):
        self.module = nn.ObjectModule(SYMBOLS, build_object(archs))
        self.rope_glue = nn.ObjectModule({"ferrum_split_rotary": None}, build_rope_glue(*rope)) if rope else None

    @staticmethod
    def blockers(cfg: DecoderConfig, quant: QuantSpec) -> list[str]:
        return kernel_blockers(cfg, quant)

    def _register(self) -> None:
        exporter = Exporter.current()
        for module in (self.module, self.rope_glue):
            if module is not None and module not in exporter.extern_mods:
                nn.add_extern(module)

    def _call(self, name: str, *args):
        """``call_dps_packed`` of one kernel symbol (``nn.ExternModule.__getitem__`` in TVM 0.27
        cannot declare several outputs, so the call is built here)."""
        self._register()
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

    def norm_logits(self, x: Tensor, norm_weight: Tensor, eps: float, weights: list[Tensor]) -> Tensor:
        """Float32 logits ``rmsnorm(x) @ W.T``, ``weights`` = [W] (the LM head is never quantized)."""
        return self._call("ferrum_norm_logits_f16", x, norm_weight, weights[0], eps)[0]

    def norm_gate_up(self, x: Tensor, norm_weight: Tensor, eps: float, weights: list[Tensor]) -> Tensor:
        """SwiGLU input: ``silu(h @ Wg.T) * (h @ Wu.T)`` with ``h = rmsnorm(x)``, W = [Wg; Wu]."""
        if len(weights) == 1:
            return self._call("ferrum_norm_gate_up_f16", x, norm_weight, weights[0], eps)[0]
        return self._call("ferrum_norm_gate_up_q4", x, norm_weight, *weights, eps)[0]

    def sample(self, logits: Tensor, params: Tensor) -> Tensor:
        """Token ids (int32, one per row) from float32 logits and per-row sampling parameters."""
        return self._call("ferrum_sample_tokens", logits, params)

    def sample_masked(self, logits: Tensor, params: Tensor, masks: Tensor) -> Tensor:
        """``sample`` with each row's disallowed tokens (a zero bit in ``masks``) excluded."""
        return self._call("ferrum_sample_tokens_masked", logits, params, masks)


@relax.expr_functor.mutator
class _AttentionSwap(relax.PyExprMutator):
    def __init__(self, mod: IRModule, slots: dict[int, tuple[str, str]], rope: bool):
        super().__init__(mod)
        self.slots, self.rope = slots, rope

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not is_kv_cache_create(call):
            return call
        args = list(call.args)
        for position, (tvm_name, ours) in self.slots.items():
            slot = args[position]
            if not (isinstance(slot, relax.Tuple) and len(slot.fields) == 2
                    and tvm_name in getattr(slot.fields[1], "name_hint", "")):
                raise FerrumError(f"TVM's paged KV cache arguments changed: no {tvm_name} at {position}")
            args[position] = relax.Tuple([slot.fields[0], relax.ExternFunc(ours)])
        if self.rope:
            position, tvm_name, ours = SPLIT_ROTARY_SLOT
            if tvm_name not in getattr(args[position], "name_hint", ""):
                raise FerrumError(f"TVM's paged KV cache arguments changed: no {tvm_name} at {position}")
            args[position] = relax.ExternFunc(ours)
        return relax.Call(call.op, args, call.attrs, call.ty_args)


def install_attention_kernels(mod: IRModule, kernels) -> IRModule:
    """Give every paged KV cache the module creates our ragged-prefill attention (the new tokens
    of a prefill attending to each other), paged decode attention and, where the model's RoPE
    allows, split-rotary kernel in place of TVM's TIR ones. Attention over already cached pages
    during prefill (chunked prompts, prefix hits) and tree attention stay TVM's."""
    swap = _AttentionSwap(mod, kernels.attention_slots, kernels.rope_glue is not None)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            swap.builder_.update_func(gvar, swap.visit_expr(func))
    return swap.builder_.get()
