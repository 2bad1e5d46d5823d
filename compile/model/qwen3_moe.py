"""Qwen3-MoE: Qwen3's attention (``compile/model/llama.py`` with q/k norm) and, in every layer, a
router over ``num_experts`` SwiGLU experts.

Routing is transformers' ``Qwen3MoeTopKRouter``: softmax of the router logits in float32, top-k,
renormalized to sum 1 when ``norm_topk_prob``, cast to the model dtype; the layer's output is the
weighted sum of the selected experts' outputs. The experts are stacked in two tensors and the
expert projections are gathers: each token's row reads only the weights of the experts it was
routed to (``expert_linear``), on every target, so a decode step reads k of the experts, not all
of them. TVM schedules these gathers with its generic rules (no grouped GEMM of our own yet), and
experts are unquantized: ``q4*`` schemes are refused for this architecture.
"""

from __future__ import annotations

from tvm import te
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache
from tvm.target import Target

from compile.kernels.ops import CudaKernels
from compile.model.layers import Embedding, QLinear, linear
from compile.model.llama import LlamaAttention, LlamaForCausalLM, unsupported_features
from ferrum.errors import FerrumError, ModelSourceError
from ferrum.model_config import DecoderConfig
from ferrum.quantization import QuantSpec


class Stacked(nn.Module):
    """One weight tensor under ``<name>.weight`` (the router, and the stacked experts)."""

    def __init__(self, shape: tuple[int, int], dtype: str):
        self.weight = nn.Parameter(shape, dtype)


def expert_linear(x: Tensor, experts: Tensor, weight: Tensor, rows: int) -> Tensor:
    """``y[t, j] = x[t, j] @ W_e.T`` for e = ``experts[t, j]``, W_e the e-th block of ``rows`` rows
    of ``weight`` (experts × rows, in); ``x`` is (t, in) (the same input for every j) or (t, k, in).
    Accumulates in float32; reads only the selected experts' rows."""
    n_in, shared = int(weight.shape[1]), x.ndim == 2

    def gather(x: te.Tensor, experts: te.Tensor, w: te.Tensor) -> te.Tensor:
        k = te.reduce_axis((0, n_in), name="k")
        t, topk = experts.shape
        acc = te.compute(
            (t, topk, rows),
            lambda i, j, o: te.sum((x[i, k] if shared else x[i, j, k]).astype("float32")
                                   * w[experts[i, j] * rows + o, k].astype("float32"), axis=k),
            name="expert_linear",
        )
        if w.dtype == "float32":
            return acc
        return te.compute(acc.shape, lambda *idx: acc[idx].astype(w.dtype), name="cast")

    return op.tensor_expr_op(gather, "expert_linear", [x, experts, weight])


class MoeMLP(nn.Module):
    def __init__(self, cfg: DecoderConfig, q: QuantSpec):
        d, ffn, n = cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts
        self.router = Stacked((n, d), q.model_dtype)
        self.experts_gate_up = Stacked((n * 2 * ffn, d), q.model_dtype)
        self.experts_down = Stacked((n * d, ffn), q.model_dtype)
        self.cfg, self.quant = cfg, q

    def forward(self, x: Tensor) -> Tensor:
        cfg, dtype = self.cfg, self.quant.model_dtype
        b, s, d = x.shape
        tokens = op.reshape(x, (b * s, d))
        logits = linear(tokens, [self.router.weight], self.quant, "float32")
        weights, experts = op.topk(op.softmax(logits, axis=-1), cfg.num_experts_per_tok, axis=-1, ret_type="both")
        if cfg.norm_topk_prob:
            weights = weights / op.sum(weights, axis=-1, keepdims=True)
        ffn = cfg.moe_intermediate_size
        gate, up = op.split(expert_linear(tokens, experts, self.experts_gate_up.weight, 2 * ffn), 2, axis=-1)
        out = expert_linear(op.silu(gate) * up, experts, self.experts_down.weight, d)  # (t, k, d)
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
        if q.quantized:
            missing.append(f"{q.name} (experts are built unquantized: q0f32 or q0f16)")
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
