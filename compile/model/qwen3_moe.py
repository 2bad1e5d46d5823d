"""Qwen3-MoE: Qwen3's attention (``compile/model/llama.py`` with q/k norm) and, in every layer, a
router over ``num_experts`` SwiGLU experts.

Routing is transformers' ``Qwen3MoeTopKRouter``: softmax of the router logits in float32, top-k,
renormalized to sum 1 when ``norm_topk_prob``, cast to the model dtype; the layer's output is the
weighted sum of the selected experts' outputs. The experts are stacked in two tensors and the
expert projections are gathers: each token's row reads only the weights of the experts it was
routed to (``expert_linear``), on every target, so a decode step reads k of the experts, not all
of them. Under ``q4f16`` the stacked experts are int4 like every q4 linear layer (eight nibbles per
``uint32``, a float16 scale and minimum per group of 32 inputs: GGUF Q4_1 exactly, see
``compile/quantize.py``), and the gather dequantizes the routed experts' words inside the product,
so no expert is ever materialized in float16. The router stays in the model dtype (it is tiny and
decides the routing). TVM schedules these gathers with its generic rules (no grouped GEMM of our
own yet). The CPU's ``q4f32`` (rows interleaved by 16 and an int8 LM head, for Ferrum's CPU GEMV,
which the gather does not use) is refused; its GPU layout (q4f16's, in float32) builds.
"""

from __future__ import annotations

from tvm import te
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache
from tvm.target import Target

from compile.kernels.ops import CudaKernels
from compile.model.layers import EXPERT_BLOCK, Q4_PER_WORD, Embedding, QLinear, q4_value, linear
from compile.model.llama import LlamaAttention, LlamaForCausalLM, unsupported_features
from ferrum.errors import FerrumError, ModelSourceError
from ferrum.model_config import DecoderConfig
from ferrum.quantization import QuantSpec


class Stacked(nn.Module):
    """One weight tensor under ``<name>.weight`` (the router)."""

    def __init__(self, shape: tuple[int, int], dtype: str):
        self.weight = nn.Parameter(shape, dtype)


class Experts(nn.Module):
    """One projection of every expert, stacked: ``experts * rows`` rows of ``n_in`` inputs, expert
    after expert, under ``<name>.weight`` (q0) or ``<name>.q_weight/q_scale/q_min`` (int4, the
    names and layout of a ``QLinear``, which ``compile/weights.py`` writes for "linear" plans)."""

    def __init__(self, experts: int, rows: int, n_in: int, q: QuantSpec):
        self.rows, self.quant = rows, q
        if q.quantized:
            if n_in % q.group_size:
                raise ModelSourceError(f"expert inputs {n_in} are not a multiple of the int4 group {q.group_size}")
            self.q_weight = nn.Parameter((experts * rows, n_in // Q4_PER_WORD), "uint32")
            self.q_scale = nn.Parameter((experts * rows, n_in // q.group_size), q.model_dtype)
            self.q_min = nn.Parameter((experts * rows, n_in // q.group_size), q.model_dtype)
        else:
            self.weight = nn.Parameter((experts * rows, n_in), q.model_dtype)

    def forward(self, x: Tensor, experts: Tensor) -> Tensor:
        weights = [self.q_weight, self.q_scale, self.q_min] if self.quant.quantized else [self.weight]
        return expert_linear(x, experts, weights, self.rows, self.quant)


def expert_linear(x: Tensor, experts: Tensor, weights: list[Tensor], rows: int, spec: QuantSpec) -> Tensor:
    """``y[t, j] = x[t, j] @ W_e.T`` for e = ``experts[t, j]``, W_e the e-th block of ``rows`` rows
    of the stacked weight (experts × rows, in); ``x`` is (t, in) (the same input for every j) or
    (t, k, in). ``weights`` is ``[weight]`` (q0) or ``[q_weight, q_scale, q_min]`` (int4, dequantized
    inside the product: only the selected experts' words are read). Accumulates in float32."""
    quantized, group, dtype = spec.quantized, spec.group_size, spec.model_dtype
    n_in, shared = int(weights[0].shape[1]) * (Q4_PER_WORD if quantized else 1), x.ndim == 2

    def gather(x: te.Tensor, experts: te.Tensor, *ws: te.Tensor) -> te.Tensor:
        k = te.reduce_axis((0, n_in), name="k")
        t, topk = experts.shape
        if quantized:
            qw, qs, qm = ws

            def w(row, col):
                return q4_value(qw[row, col // Q4_PER_WORD], col, qs[row, col // group], qm[row, col // group], dtype)
        else:
            def w(row, col):
                return ws[0][row, col]

        acc = te.compute(
            (t, topk, rows),
            lambda i, j, o: te.sum((x[i, k] if shared else x[i, j, k]).astype("float32")
                                   * w(experts[i, j] * rows + o, k).astype("float32"), axis=k),
            name=EXPERT_BLOCK,
        )
        if dtype == "float32":
            return acc
        return te.compute(acc.shape, lambda *idx: acc[idx].astype(dtype), name="cast")

    return op.tensor_expr_op(gather, "expert_linear", [x, experts, *weights])


class MoeMLP(nn.Module):
    def __init__(self, cfg: DecoderConfig, q: QuantSpec):
        d, ffn, n = cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts
        self.router = Stacked((n, d), q.model_dtype)
        self.experts_gate_up = Experts(n, 2 * ffn, d, q)
        self.experts_down = Experts(n, d, ffn, q)
        self.cfg, self.quant = cfg, q

    def forward(self, x: Tensor) -> Tensor:
        cfg, dtype = self.cfg, self.quant.model_dtype
        b, s, d = x.shape
        tokens = op.reshape(x, (b * s, d))
        logits = linear(tokens, [self.router.weight], self.quant.unquantized(), "float32")
        weights, experts = op.topk(op.softmax(logits, axis=-1), cfg.num_experts_per_tok, axis=-1, ret_type="both")
        if cfg.norm_topk_prob:
            weights = weights / op.sum(weights, axis=-1, keepdims=True)
        gate, up = op.split(self.experts_gate_up(tokens, experts), 2, axis=-1)
        out = self.experts_down(op.silu(gate) * up, experts)  # (t, k, d)
        out = op.sum(out * op.unsqueeze(weights.astype(dtype), -1), axis=1)
        return op.reshape(out, (b, s, d))


class MoeDecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig, q: QuantSpec):
        self.input_layernorm = nn.RMSNorm(cfg.hidden_size, -1, cfg.rms_norm_eps, bias=False, dtype=q.model_dtype)
        self.self_attn = LlamaAttention(cfg, q)
        self.post_attention_layernorm = nn.RMSNorm(cfg.hidden_size, -1, cfg.rms_norm_eps, bias=False, dtype=q.model_dtype)
        self.mlp = MoeMLP(cfg, q)

    def forward(self, x: Tensor, cache: PagedKVCache, layer_id: int) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cache, layer_id)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3MoeForCausalLM(LlamaForCausalLM):
    """The Llama network's functions, cache and LM head around expert layers."""

    def __init__(self, cfg: DecoderConfig, q: QuantSpec, target: Target, kernels: CudaKernels | None = None):
        missing = [m for m in unsupported_features(cfg) if m != "routed experts"]
        if not cfg.num_experts or not cfg.num_experts_per_tok:
            missing.append("no routed experts")
        if q.interleave or q.head_bits:
            missing.append(f"{q.name} (its row-interleaved CPU layout; the experts build as q0f32, q0f16 or q4f16)")
        if missing:
            raise ModelSourceError(f"{cfg.architecture} models with {', '.join(missing)} are not supported yet")
        if kernels is not None:
            raise FerrumError("internal error: Ferrum's CUDA kernels cannot take an expert model")
        self.cfg, self.quant, self.target, self.kernels = cfg, q, target, None
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, q.model_dtype)
        self.layers = nn.ModuleList([MoeDecoderLayer(cfg, q) for _ in range(cfg.num_hidden_layers)])
        self.norm = nn.RMSNorm(cfg.hidden_size, -1, cfg.rms_norm_eps, bias=False, dtype=q.model_dtype)
        self.separate_head = not cfg.tie_word_embeddings or q.head().quantized
        if self.separate_head:
            self.lm_head = QLinear(cfg.hidden_size, cfg.vocab_size, q.head())
