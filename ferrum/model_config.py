"""Architecture hyper-parameters stored in an artifact's manifest.

Both sides need them: the compile stage builds the network from them, the runtime sizes the KV
cache, reshapes embeddings and checks context limits with them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

NORMS = ("rmsnorm", "layernorm")


@dataclass(frozen=True)
class DecoderConfig:
    """A decoder-only transformer LLM over the paged KV cache: its sizes and what its layers do.

    The feature flags say explicitly how an architecture departs from Llama (their defaults), so
    the network (``compile/model/<architecture>.py``) and the CUDA kernel gate
    (``compile/builders/decoder.py``) read one description; a network refuses flags it does not
    implement rather than ignore them. Manifests written before a flag existed load with its
    default, which is what those (Llama) models did.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float  # epsilon of every norm layer (named as in Hugging Face Llama configs)
    rope_theta: float
    context_length: int
    tie_word_embeddings: bool
    rope_scaling: dict[str, Any] = field(default_factory=dict)
    architecture: str = "llama"
    qkv_bias: bool = False  # bias on the Q, K and V projections (Qwen2; Llama's attention_bias)
    o_bias: bool = False  # bias on the attention output projection (Llama's attention_bias)
    mlp_bias: bool = False  # biases on the gate, up and down projections (Llama's mlp_bias)
    qk_norm: bool = False  # RMSNorm over each head of Q and K before RoPE (Qwen3, Gemma 3)
    sliding_window: int = 0  # tokens each position of a window layer attends back over; 0: none (Mistral, Gemma 2)
    window_layers: list[int] = field(default_factory=list)  # layers limited to sliding_window (Gemma: the local ones)
    activation: str = "silu"  # the gated MLP's activation: silu (SwiGLU), gelu_pytorch_tanh (GeGLU), ...
    norm: str = "rmsnorm"  # one of NORMS
    post_norms: bool = False  # a norm on the attention and on the MLP output before each residual add (Gemma 2/3)
    embed_scale: float = 1.0  # embeddings are multiplied by it (Gemma: sqrt(hidden_size))
    attention_scale: float = 0.0  # softmax scale of attention scores; 0: head_dim ** -0.5 (Gemma: query_pre_attn_scalar)
    final_logit_softcap: float = 0.0  # logits = cap * tanh(logits / cap) (Gemma 2); 0: none
    attn_logit_softcap: float = 0.0  # the same on attention scores (Gemma 2); 0: none
    local_layers: list[int] = field(default_factory=list)  # layers whose RoPE base is local_rope_theta (Gemma 3)
    local_rope_theta: float = 0.0
    num_experts: int = 0  # routed experts of every layer's MLP; 0: a dense MLP (Qwen3-MoE: 128)
    num_experts_per_tok: int = 0  # experts each token is routed to (top-k of the router's softmax)
    moe_intermediate_size: int = 0  # each expert's hidden width
    norm_topk_prob: bool = False  # renormalize the top-k routing weights to sum to 1

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, not {self.norm!r}")
        if self.sliding_window < 0:
            raise ValueError(f"sliding_window must be >= 0 (0: full attention), not {self.sliding_window}")
        if bool(self.sliding_window) != bool(self.window_layers):
            raise ValueError(f"a sliding window ({self.sliding_window}) needs the layers it applies to, and "
                             f"window layers ({self.window_layers}) need a window")
        if any(not 0 <= i < self.num_hidden_layers for i in self.window_layers):
            raise ValueError(f"window_layers {self.window_layers} name layers outside 0..{self.num_hidden_layers - 1}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecoderConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Bytes of K and V one token occupies across all layers."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * dtype_bytes


# The name from before other decoder architectures: runtime and bench code still import it.
LlamaConfig = DecoderConfig
