"""Gemma 2 and Gemma 3 (text) decoders over TVM's paged KV cache.

A Llama block with Gemma's departures (all read from ``DecoderConfig``): embeddings scaled by
sqrt(hidden), a norm on the attention and on the MLP output before each residual add
(``post_norms``), GeGLU with tanh GELU, a softmax scale from ``query_pre_attn_scalar``, q/k
RMSNorm (Gemma 3), final and attention logit soft-capping (Gemma 2). The norms are plain RMSNorms because the
weight plan adds Gemma's ``1 +`` at load (``compile/model/gemma_hf.py``).

Gemma 3's local and global layers rotate with different RoPE bases, and TVM's cache applies one
base to every layer, so the cache is built without RoPE (``RopeMode.NONE``) and each layer
rotates Q and K itself with TVM's ``llama_rope_with_position_map`` at the positions the cache
reports. Attention soft-capping (every released Gemma 2) has no counterpart in TVM 0.27's paged
attention kernels: the decoder builder rewrites the cache's kernels with it
(``compile/model/softcap.py``). TVM's kernels run every target: Ferrum's CUDA kernels fuse
SwiGLU blocks only (see ``compile/kernels/ops.py::kernel_blockers``).
"""

from __future__ import annotations

from tvm import tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode
from tvm.relax.frontend.nn.llm.position_embedding import llama_rope_with_position_map
from tvm.target import Target

from compile.kernels.ops import CudaKernels
from compile.model.layers import Embedding, QLinear
from compile.model.llama import LlamaForCausalLM
from compile.model.sliding_window import windowed_scale
from ferrum.errors import FerrumError, ModelSourceError
from ferrum.model_config import DecoderConfig
from ferrum.quantization import QuantSpec


def unsupported_features(cfg: DecoderConfig) -> list[str]:
    missing = []
    if cfg.activation != "gelu_pytorch_tanh":
        missing.append(f"activation {cfg.activation!r} (only gelu_pytorch_tanh)")
    if cfg.norm != "rmsnorm" or not cfg.post_norms or cfg.mlp_bias:
        missing.append("norms or MLP biases other than Gemma's")
    if cfg.rope_scaling and cfg.rope_scaling.get("rope_type") != "linear":
        missing.append(f"RoPE scaling {cfg.rope_scaling.get('rope_type')!r}")
    return missing


def _norm(width: int, cfg: DecoderConfig, q: QuantSpec) -> nn.RMSNorm:
    return nn.RMSNorm(width, -1, cfg.rms_norm_eps, bias=False, dtype=q.model_dtype)


class GemmaAttention(nn.Module):
    def __init__(self, cfg: DecoderConfig, q: QuantSpec, layer_id: int):
        self.num_q_heads, self.num_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        qkv_out = (self.num_q_heads + 2 * self.num_kv_heads) * self.head_dim
        self.qkv_proj = QLinear(cfg.hidden_size, qkv_out, q, bias=cfg.qkv_bias)
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm:
            self.q_norm = _norm(cfg.head_dim, cfg, q)
            self.k_norm = _norm(cfg.head_dim, cfg, q)
        self.o_proj = QLinear(self.num_q_heads * self.head_dim, cfg.hidden_size, q, bias=cfg.o_bias)
        self.local = local = layer_id in cfg.local_layers
        theta = cfg.local_rope_theta if local else cfg.rope_theta
        scale = 1.0 if local or not cfg.rope_scaling else 1.0 / cfg.rope_scaling["factor"]
        rope = llama_rope_with_position_map(theta, scale, cfg.head_dim, self.num_q_heads, self.num_kv_heads,
                                            q.model_dtype, {})
        # (qkv, positions) -> (q, k, v); its last parameter, apply_rope, fixed to 1. The cache's own
        # split function carries the same global symbol, so this one goes without.
        self.rope = rope.specialize({rope.params[-1]: tirx.IntImm("int64", 1)}).without_attr("global_symbol")
        self.sm_scale = windowed_scale(cfg.attention_scale or cfg.head_dim**-0.5, layer_id in cfg.window_layers)
        self.dtype = q.model_dtype

    def forward(self, x: Tensor, cache: PagedKVCache, layer_id: int) -> Tensor:
        b, s, _ = x.shape
        nq, nkv, hd = self.num_q_heads, self.num_kv_heads, self.head_dim
        qkv = op.reshape(self.qkv_proj(x), (b * s, nq + 2 * nkv, hd))
        q, k, v = op.split(qkv, [nq, nq + nkv], axis=1)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        positions = cache.get_query_positions(b * s)
        q, k, v = op.tensor_ir_op(
            self.rope, "local_rope" if self.local else "global_rope", [op.concat([q, k, v], dim=1), positions],
            [Tensor.placeholder((b * s, n, hd), self.dtype) for n in (nq, nkv, nkv)],
        )
        qkv = op.reshape(op.concat([q, k, v], dim=1), (b, s, nq + 2 * nkv, hd))
        out = cache.attention_with_fused_qkv(layer_id, qkv, nq, sm_scale=self.sm_scale)
        return self.o_proj(op.reshape(out, (b, s, nq * hd)))


class GemmaMLP(nn.Module):
    def __init__(self, cfg: DecoderConfig, q: QuantSpec):
        self.gate_up_proj = QLinear(cfg.hidden_size, 2 * cfg.intermediate_size, q)
        self.down_proj = QLinear(cfg.intermediate_size, cfg.hidden_size, q)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = op.split(self.gate_up_proj(x), 2, axis=-1)
        return self.down_proj(op.gelu(gate, approximate="tanh") * up)


class GemmaDecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig, q: QuantSpec, layer_id: int):
        self.input_layernorm = _norm(cfg.hidden_size, cfg, q)
        self.self_attn = GemmaAttention(cfg, q, layer_id)
        self.post_attention_layernorm = _norm(cfg.hidden_size, cfg, q)
        self.pre_feedforward_layernorm = _norm(cfg.hidden_size, cfg, q)
        self.mlp = GemmaMLP(cfg, q)
        self.post_feedforward_layernorm = _norm(cfg.hidden_size, cfg, q)

    def forward(self, x: Tensor, cache: PagedKVCache, layer_id: int) -> Tensor:
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cache, layer_id))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class GemmaForCausalLM(LlamaForCausalLM):
    """Shares the Llama network's exported functions, LM head and spec; its own blocks, embedding
    scale, logit soft-cap and a cache without RoPE."""

    def __init__(self, cfg: DecoderConfig, q: QuantSpec, target: Target, kernels: CudaKernels | None = None):
        missing = unsupported_features(cfg)
        if missing:
            raise ModelSourceError(f"{cfg.architecture} models with {', '.join(missing)} are not supported yet")
        if kernels is not None:
            raise FerrumError("internal error: Ferrum's CUDA kernels cannot take a Gemma model")
        self.cfg, self.quant, self.target, self.kernels = cfg, q, target, None
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, q.model_dtype)
        self.layers = nn.ModuleList([GemmaDecoderLayer(cfg, q, i) for i in range(cfg.num_hidden_layers)])
        self.norm = _norm(cfg.hidden_size, cfg, q)
        self.separate_head = not cfg.tie_word_embeddings or q.head().quantized
        if self.separate_head:
            self.lm_head = QLinear(cfg.hidden_size, cfg.vocab_size, q.head())

    def embed(self, ids: Tensor) -> Tensor:
        x = self.embed_tokens(ids)
        return x * self.cfg.embed_scale if self.cfg.embed_scale != 1 else x

    def _logits(self, hidden: Tensor) -> Tensor:
        logits = super()._logits(hidden)
        cap = self.cfg.final_logit_softcap
        return op.tanh(logits / cap) * cap if cap else logits

    def _cache_rope(self) -> tuple[RopeMode, dict]:
        return RopeMode.NONE, {}  # each layer rotates Q and K itself, with its own RoPE base
