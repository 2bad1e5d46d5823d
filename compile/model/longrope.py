"""Phi-3's LongRoPE (``rope_type: longrope``): rotate-half RoPE whose frequencies are divided by
per-frequency ``short_factor`` or ``long_factor`` and whose cos/sin are scaled by an attention factor.

transformers picks the set per forward pass, from the largest position in it: long when
``max(position) + 1 > original_max_position_embeddings``, short otherwise. TVM 0.27's kernel
(``position_embedding.fused_rope_longrope_scaling``) picks by the number of tokens in the pass
instead, which breaks every decode step after a long prompt, so the network rotates Q and K itself
(its cache has ``RopeMode.NONE``) at the positions the cache reports, with this rule:

- prefill and verify: transformers' rule over the pass. For one sequence that is the sequence's
  length, as in transformers; several sequences prefilled together share the decision (as
  transformers' batches and vLLM do), and a prompt split into chunks decides per chunk.
- decode: per token (each token is its own sequence's newest), long when ``position + 1 >
  original``: a batch of sequences decodes as each would alone.

One departure stays: when a sequence grows past the original length during decoding,
transformers (Phi-3's ``prepare_inputs_for_generation``) drops its cache and recomputes the whole
sequence with the long factors; here the keys already cached keep the short rotation.

``DecoderConfig.rope_scaling`` holds both factor sets, the original context and the attention
factor (``compile/model/phi3_hf.py::longrope_parameters`` reads them as transformers does).
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx
from tvm.relax.frontend.nn import Tensor, op

from ferrum.model_config import DecoderConfig


def inverse_frequencies(cfg: DecoderConfig) -> np.ndarray:
    """(2, head_dim / 2) float32: row 0 the short set's inverse frequencies, row 1 the long set's,
    computed as transformers does (``1 / (factor * base ** (2i / dim))`` in float32)."""
    half = cfg.head_dim // 2
    exponents = np.arange(0, cfg.head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(cfg.head_dim)
    base = np.float32(cfg.rope_theta) ** exponents
    rows = [np.asarray(cfg.rope_scaling[k], dtype=np.float32) for k in ("short_factor", "long_factor")]
    if any(r.shape != (half,) for r in rows):
        raise ValueError(f"LongRoPE factors must have head_dim / 2 = {half} entries")
    return np.stack([np.float32(1.0) / (r * base) for r in rows])


def longrope_rotate(qkv: Tensor, positions: Tensor, cfg: DecoderConfig, per_token: bool) -> Tensor:
    """Q and K heads of ``qkv`` (tokens, q + 2 kv heads, head_dim) rotated at ``positions``
    (tokens,), V unchanged; ``per_token``: decide short/long per token (decode), else per pass."""
    nq, nkv, half = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim // 2
    original, scale = cfg.rope_scaling["original_max_position_embeddings"], cfg.rope_scaling["attention_factor"]
    lengths = positions if per_token else op.max(positions, keepdims=True)
    table = Tensor.from_const(inverse_frequencies(cfg))

    def rotate(x: te.Tensor, pos: te.Tensor, longest: te.Tensor, inv: te.Tensor) -> te.Tensor:
        def value(s, h, i):
            row = tirx.Select(longest[s if per_token else 0] + 1 > original, 1, 0)
            angle = pos[s].astype("float32") * inv[row, i % half]
            xi = x[s, h, i].astype("float32")
            other = tirx.if_then_else(i < half, -x[s, h, i + half], x[s, h, i - half]).astype("float32")
            rotated = (xi * tirx.cos(angle) * scale + other * tirx.sin(angle) * scale).astype(x.dtype)
            return tirx.if_then_else(h < nq + nkv, rotated, x[s, h, i])

        return te.compute(x.shape, value, name="longrope")

    return op.tensor_expr_op(rotate, "longrope_rotate", [qkv, positions, lengths, table])
