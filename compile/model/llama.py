"""Llama-family decoder in ``tvm.relax.frontend.nn`` over TVM's paged KV cache.

Structure follows MLC-LLM's ``llama_model.py``: fused QKV and gate/up projections, RMSNorm,
and attention through ``PagedKVCache.attention_with_fused_qkv``, whose TIR kernels apply RoPE
while appending K/V to the cache. Of ``DecoderConfig``'s feature flags it implements tied
embeddings, the projection biases, q/k norm (Qwen3), LongRoPE (Phi-3; the attention rotates Q
and K itself, ``compile/model/longrope.py``) and sliding-window attention in the layers
``window_layers`` names (``compile/model/sliding_window.py``); the others are refused (``unsupported_features``). CUDA
float16 builds pass ``kernels`` (``compile/kernels/ops.py``; q4f32 CPU builds the same operators from
``compile/kernels/cpu_ops.py``): each block then runs as four fused
kernels around attention, RMSNorm+QKV, O-projection+residual, RMSNorm+gate/up+SwiGLU,
down-projection+residual, and the final norm is folded into the LM head; a q/k/v bias (Qwen2) and
q/k norm (Qwen3) are TVM ops between the QKV kernel and attention. The exported functions
(``ferrum.manifest.LLM_FUNCTIONS``, which every architecture exports) are the runtime's whole
interface:

- ``embed(ids[n]) -> (n, hidden)``
- ``batch_prefill(embeds[1, n, hidden], logit_positions[b], cache) -> logits[1, b, vocab]``
  for ``b`` sequences packed into one ragged row; only the listed positions get logits.
- ``batch_decode(embeds[b, 1, hidden], cache) -> logits[b, 1, vocab]``
- ``batch_verify(embeds[1, n, hidden], cache) -> logits[1, n, vocab]`` (every position: for
  speculative decoding)
- ``create_paged_kv_cache(max_batch_size, max_total_seq_len, prefill_chunk_size, page_size,
  support_sliding_window)``: all sizes are chosen at run time.
- with CUDA ``kernels``: ``sample_tokens(logits[b, vocab], params[b, 5]) -> ids[b]`` (GPU sampling)
  and ``sample_tokens_masked(logits, params, masks[b, ceil(vocab / 32)]) -> ids[b]`` (the same under
  a grammar bitmask per row).
"""

from __future__ import annotations

from tvm import relax, te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op, spec
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode, TIRPagedKVCache
from tvm.target import Target

from compile.kernels.cpu_ops import CpuKernels
from compile.kernels.ops import CudaKernels
from compile.model.layers import Embedding, QLinear
from compile.model.longrope import longrope_rotate
from compile.model.sliding_window import windowed_scale
from ferrum.errors import FerrumError, ModelSourceError
from ferrum.manifest import SAMPLE_PARAMS, mask_words
from ferrum.model_config import DecoderConfig
from ferrum.quantization import QuantSpec


def unsupported_features(cfg: DecoderConfig) -> list[str]:
    """The config's feature flags this network does not implement (empty: it builds the model exactly)."""
    missing = []
    if cfg.activation != "silu":
        missing.append(f"activation {cfg.activation!r} (only silu)")
    if cfg.norm != "rmsnorm":
        missing.append(f"norm {cfg.norm!r} (only rmsnorm)")
    gemma = [name for name, on in (("post-attention/MLP norms", cfg.post_norms), ("embedding scaling", cfg.embed_scale != 1),
                                   ("an attention scale", cfg.attention_scale), ("soft-capping", cfg.final_logit_softcap
                                   or cfg.attn_logit_softcap), ("local RoPE layers", cfg.local_layers),
                                  ("routed experts", cfg.num_experts)) if on]
    return missing + gemma


def is_longrope(cfg: DecoderConfig) -> bool:
    return cfg.rope_scaling.get("rope_type") == "longrope"


def qk_norm(qkv: Tensor, q_weight: Tensor, k_weight: Tensor, num_q_heads: int, num_kv_heads: int,
            eps: float) -> Tensor:
    """RMSNorm over each Q head (``q_weight``) and K head (``k_weight``) of a fused (b, s, heads, d)
    QKV, V heads passed through, in float32 like transformers' Qwen3RMSNorm.

    One TIR function, a reduction and its epilogue, so the GPU runs one kernel per layer where
    splitting QKV, two norms and a concat took four (and copied V twice)."""
    d = int(qkv.shape[-1])

    def fused(x: te.Tensor, wq: te.Tensor, wk: te.Tensor) -> te.Tensor:
        i = te.reduce_axis((0, d), name="i")
        sumsq = te.compute(x.shape[:-1], lambda b, s, h: te.sum(
            x[b, s, h, i].astype("float32") * x[b, s, h, i].astype("float32"), axis=i), name="sumsq")

        def normed(b, s, h, j):
            v = x[b, s, h, j].astype("float32")
            w = tirx.Select(h < num_q_heads, wq[j], wk[j]).astype("float32")
            scaled = v * tirx.rsqrt(sumsq[b, s, h] / d + tirx.const(eps, "float32")) * w
            return tirx.Select(h < num_q_heads + num_kv_heads, scaled, v).astype(x.dtype)

        return te.compute(x.shape, normed, name="qk_norm")

    return op.tensor_expr_op(fused, "qk_norm", [qkv, q_weight, k_weight])


class LlamaAttention(nn.Module):
    def __init__(self, cfg: DecoderConfig, q: QuantSpec):
        self.num_q_heads, self.num_kv_heads, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        qkv_out = (self.num_q_heads + 2 * self.num_kv_heads) * self.head_dim
        self.qkv_proj = QLinear(cfg.hidden_size, qkv_out, q, bias=cfg.qkv_bias)
        if cfg.qk_norm:  # Qwen3: RMSNorm over each head of Q and K, before RoPE
            self.q_norm = nn.RMSNorm(cfg.head_dim, -1, cfg.rms_norm_eps, bias=False, dtype=q.model_dtype)
            self.k_norm = nn.RMSNorm(cfg.head_dim, -1, cfg.rms_norm_eps, bias=False, dtype=q.model_dtype)
        self.qk_norm = cfg.qk_norm
        self.o_proj = QLinear(self.num_q_heads * self.head_dim, cfg.hidden_size, q, bias=cfg.o_bias)
        self.window_layers = frozenset(cfg.window_layers)  # their attention is masked to the sliding window
        self.longrope = cfg if is_longrope(cfg) else None  # rotates Q and K itself (the cache does not)

    def forward(self, x: Tensor, cache: PagedKVCache, layer_id: int) -> Tensor:
        return self.o_proj(self.attend(self.qkv_proj(x), cache, layer_id))

    def attend(self, qkv: Tensor, cache: PagedKVCache, layer_id: int) -> Tensor:
        """Attention over the cache from the fused QKV projection; (b, s, heads * head_dim)."""
        b, s, _ = qkv.shape
        qkv = op.reshape(qkv, (b, s, self.num_q_heads + 2 * self.num_kv_heads, self.head_dim))
        if self.qk_norm:
            qkv = qk_norm(qkv, self.q_norm.weight, self.k_norm.weight, self.num_q_heads, self.num_kv_heads,
                          self.q_norm.epsilon)
        if self.longrope is not None:
            heads = self.num_q_heads + 2 * self.num_kv_heads
            flat = longrope_rotate(op.reshape(qkv, (b * s, heads, self.head_dim)), cache.get_query_positions(b * s),
                                   self.longrope, per_token=isinstance(s, int) and s == 1)  # s == 1: decode
            qkv = op.reshape(flat, (b, s, heads, self.head_dim))
        scale = windowed_scale(self.head_dim**-0.5, layer_id in self.window_layers)
        out = cache.attention_with_fused_qkv(layer_id, qkv, self.num_q_heads, sm_scale=scale)
        return op.reshape(out, (b, s, self.num_q_heads * self.head_dim))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: DecoderConfig, q: QuantSpec):
        self.gate_up_proj = QLinear(cfg.hidden_size, 2 * cfg.intermediate_size, q, bias=cfg.mlp_bias)
        self.down_proj = QLinear(cfg.intermediate_size, cfg.hidden_size, q, bias=cfg.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = op.split(self.gate_up_proj(x), 2, axis=-1)
        return self.down_proj(op.silu(gate) * up)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig, q: QuantSpec, kernels: CudaKernels | CpuKernels | None):
        self.input_layernorm = nn.RMSNorm(cfg.hidden_size, -1, cfg.rms_norm_eps, bias=False, dtype=q.model_dtype)
        self.self_attn = LlamaAttention(cfg, q)
        self.post_attention_layernorm = nn.RMSNorm(cfg.hidden_size, -1, cfg.rms_norm_eps, bias=False, dtype=q.model_dtype)
        self.mlp = LlamaMLP(cfg, q)
        self.kernels = kernels

    def forward(self, x: Tensor, cache: PagedKVCache, layer_id: int) -> Tensor:
        k = self.kernels
        if k is None:
            x = x + self.self_attn(self.input_layernorm(x), cache, layer_id)
            return x + self.mlp(self.post_attention_layernorm(x))
        attn, mlp, eps = self.self_attn, self.mlp, self.input_layernorm.epsilon
        qkv = k.norm_linear(x, self.input_layernorm.weight, eps, attn.qkv_proj.weights())
        if attn.qkv_proj.bias is not None:  # Qwen2: TVM's add after the kernel (which takes no bias)
            qkv = qkv + attn.qkv_proj.bias
        x = k.linear(attn.attend(qkv, cache, layer_id), attn.o_proj.weights(), residual=x)
        h = k.norm_gate_up(x, self.post_attention_layernorm.weight, eps, mlp.gate_up_proj.weights())
        return k.linear(h, mlp.down_proj.weights(), residual=x)


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: DecoderConfig, q: QuantSpec, target: Target, kernels: CudaKernels | CpuKernels | None = None):
        missing = unsupported_features(cfg)
        if missing:
            raise ModelSourceError(f"{cfg.architecture} models with {', '.join(missing)} are not supported yet")
        if kernels is not None and kernels.blockers(cfg, q):
            raise FerrumError(f"internal error: Ferrum's kernels cannot take this model: {kernels.blockers(cfg, q)}")
        self.cfg, self.quant, self.target, self.kernels = cfg, q, target, kernels
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, q.model_dtype)
        self.layers = nn.ModuleList([LlamaDecoderLayer(cfg, q, kernels) for _ in range(cfg.num_hidden_layers)])
        self.norm = nn.RMSNorm(cfg.hidden_size, -1, cfg.rms_norm_eps, bias=False, dtype=q.model_dtype)
        # Unquantized unless the scheme says (see Embedding); a quantized head is its own parameter even when tied.
        self.separate_head = not cfg.tie_word_embeddings or q.head().quantized
        if self.separate_head:
            self.lm_head = QLinear(cfg.hidden_size, cfg.vocab_size, q.head())

    def _logits(self, hidden: Tensor) -> Tensor:
        """Float32 logits from the last layer's output (the final norm is applied here)."""
        if self.kernels is not None:
            head = self.lm_head.weights() if self.separate_head else [self.embed_tokens.weight]
            return self.kernels.norm_logits(hidden, self.norm.weight, self.norm.epsilon, head)
        hidden = self.norm(hidden)
        if not self.separate_head:
            return self.embed_tokens.lm_head(hidden, self.quant.unquantized())
        logits = self.lm_head(hidden)
        return logits if logits.dtype == "float32" else logits.astype("float32")

    def _decoder(self, x: Tensor, cache: PagedKVCache) -> Tensor:
        for layer_id, layer in enumerate(self.layers):
            x = layer(x, cache, layer_id)
        return x

    def embed(self, ids: Tensor) -> Tensor:
        return self.embed_tokens(ids)

    def batch_prefill(self, embeds: Tensor, logit_positions: Tensor, cache: PagedKVCache):
        hidden = op.take(self._decoder(embeds, cache), logit_positions, axis=1)
        return self._logits(hidden), cache

    def batch_decode(self, embeds: Tensor, cache: PagedKVCache):
        return self._logits(self._decoder(embeds, cache)), cache

    def batch_verify(self, embeds: Tensor, cache: PagedKVCache):
        return self._logits(self._decoder(embeds, cache)), cache

    def sample_tokens(self, logits: Tensor, params: Tensor) -> Tensor:
        return self.kernels.sample(logits, params)

    def sample_tokens_masked(self, logits: Tensor, params: Tensor, masks: Tensor) -> Tensor:
        return self.kernels.sample_masked(logits, params, masks)

    def _cache_rope(self) -> tuple[RopeMode, dict]:
        """How the cache's kernels rotate Q and K as they append them (a subclass may rotate itself)."""
        if is_longrope(self.cfg):
            return RopeMode.NONE, {}  # LlamaAttention rotates (compile/model/longrope.py)
        return RopeMode.NORMAL, dict(self.cfg.rope_scaling)

    def create_paged_kv_cache(
        self,
        max_batch_size: tirx.Var,
        max_total_seq_len: tirx.Var,
        prefill_chunk_size: tirx.Var,
        page_size: tirx.Var,
        support_sliding_window: tirx.Var,
    ) -> PagedKVCache:
        cfg = self.cfg
        rope_mode, rope_scaling = self._cache_rope()
        return TIRPagedKVCache(
            attn_kind="mha",
            max_batch_size=max_batch_size,
            max_total_seq_len=max_total_seq_len,
            prefill_chunk_size=prefill_chunk_size,
            page_size=page_size,
            support_sliding_window=support_sliding_window,
            layer_partition=relax.ShapeExpr([0, cfg.num_hidden_layers]),
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_key_value_heads,
            qk_head_dim=cfg.head_dim,
            v_head_dim=cfg.head_dim,
            mla_original_qk_head_dim=0,
            mla_original_v_head_dim=0,
            rope_mode=rope_mode,
            rope_scale=1,
            rope_theta=cfg.rope_theta,
            rope_scaling=rope_scaling,
            rope_ext_factors=relax.prim_value(0),
            rotary_dim=cfg.head_dim,
            enable_disaggregation=False,
            dtype=self.quant.model_dtype,
            target=self.target,
        )

    def _sampler_specs(self) -> dict:
        """``sample_tokens`` and ``sample_tokens_masked`` (``compile.kernels.ops.SAMPLER_FUNCTIONS``)."""
        vocab = self.cfg.vocab_size
        logits = spec.Tensor(["b", vocab], "float32")
        params = spec.Tensor(["b", len(SAMPLE_PARAMS)], "float32")
        none = {"param_mode": "none", "effect_mode": "none"}
        return {"sample_tokens": {"logits": logits, "params": params, "$": none},
                "sample_tokens_masked": {"logits": logits, "params": params,
                                         "masks": spec.Tensor(["b", mask_words(vocab)], "int32"), "$": none}}

    def get_default_spec(self) -> spec.ModuleSpec:
        d, dt = self.cfg.hidden_size, self.quant.model_dtype
        packed = {"param_mode": "packed", "effect_mode": "none"}
        cache = spec.Object(object_type=PagedKVCache)
        return spec.ModuleSpec.from_raw(
            {
                "embed": {"ids": spec.Tensor(["n"], "int32"), "$": packed},
                "batch_prefill": {
                    "embeds": spec.Tensor([1, "n", d], dt),
                    "logit_positions": spec.Tensor(["b"], "int32"),
                    "cache": cache,
                    "$": packed,
                },
                "batch_decode": {"embeds": spec.Tensor(["b", 1, d], dt), "cache": cache, "$": packed},
                "batch_verify": {"embeds": spec.Tensor([1, "n", d], dt), "cache": cache, "$": packed},
                "create_paged_kv_cache": {
                    "max_batch_size": int,
                    "max_total_seq_len": int,
                    "prefill_chunk_size": int,
                    "page_size": int,
                    "support_sliding_window": int,
                    "$": {"param_mode": "none", "effect_mode": "none"},
                },
                **(self._sampler_specs() if self.kernels is not None and self.kernels.samples_on_device else {}),
            },
            self,
        )
