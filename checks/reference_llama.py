"""An independent numpy Llama, the yardstick for the compiled model.

It shares no code with ``compile/`` or ``runtime/``: weights are read straight from the GGUF
(``gguf`` package) or the safetensors files, and the forward pass is written out from the
architecture's definition in float64. For GGUF weights it applies RoPE the way llama.cpp does
(adjacent pairs, on the rows as stored), so it also checks the compile stage's Q/K un-permutation;
for Hugging Face weights it rotates halves, as transformers does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class RefConfig:
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    eps: float
    theta: float
    rope_pairs: bool  # True: llama.cpp adjacent pairs; False: HF rotate-half
    rope_scaling: dict | None = None


def load_gguf(path: str | Path) -> tuple[RefConfig, dict[str, np.ndarray]]:
    import gguf

    reader = gguf.GGUFReader(str(path))
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
    weights = {}
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        weights[t.name] = w.reshape([int(d) for d in reversed(t.shape)])
    heads = int(meta["llama.attention.head_count"])
    hidden = int(meta["llama.embedding_length"])
    cfg = RefConfig(
        layers=int(meta["llama.block_count"]),
        heads=heads,
        kv_heads=int(meta.get("llama.attention.head_count_kv", heads)),
        head_dim=hidden // heads,
        eps=float(meta["llama.attention.layer_norm_rms_epsilon"]),
        theta=float(meta.get("llama.rope.freq_base", 10000.0)),
        rope_pairs=True,
    )
    named = {
        "embed": weights["token_embd.weight"],
        "norm": weights["output_norm.weight"],
        "head": weights.get("output.weight", weights["token_embd.weight"]),
    }
    for i in range(cfg.layers):
        for ours, theirs in [("q", "attn_q"), ("k", "attn_k"), ("v", "attn_v"), ("o", "attn_output"),
                             ("gate", "ffn_gate"), ("up", "ffn_up"), ("down", "ffn_down"),
                             ("n1", "attn_norm"), ("n2", "ffn_norm")]:
            named[f"{i}.{ours}"] = weights[f"blk.{i}.{theirs}.weight"]
    return cfg, named


def load_hf(folder: str | Path) -> tuple[RefConfig, dict[str, np.ndarray]]:
    from safetensors.numpy import load_file

    folder = Path(folder)
    c = json.loads((folder / "config.json").read_text())
    weights = {}
    for shard in sorted(folder.glob("*.safetensors")):
        weights.update({k: v.astype(np.float64) for k, v in load_file(shard).items()})
    heads = c["num_attention_heads"]
    cfg = RefConfig(
        layers=c["num_hidden_layers"],
        heads=heads,
        kv_heads=c.get("num_key_value_heads", heads),
        head_dim=c.get("head_dim") or c["hidden_size"] // heads,
        eps=c["rms_norm_eps"],
        theta=c.get("rope_theta", 10000.0),
        rope_pairs=False,
        rope_scaling=c.get("rope_scaling"),
    )
    named = {
        "embed": weights["model.embed_tokens.weight"],
        "norm": weights["model.norm.weight"],
        "head": weights.get("lm_head.weight", weights["model.embed_tokens.weight"]),
    }
    for i in range(cfg.layers):
        p = f"model.layers.{i}"
        for ours, theirs in [("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"),
                             ("o", "self_attn.o_proj"), ("gate", "mlp.gate_proj"), ("up", "mlp.up_proj"),
                             ("down", "mlp.down_proj"), ("n1", "input_layernorm"), ("n2", "post_attention_layernorm")]:
            named[f"{i}.{ours}"] = weights[f"{p}.{theirs}.weight"]
            if f"{p}.{theirs}.bias" in weights:  # attention_bias / mlp_bias checkpoints
                named[f"{i}.{ours}_bias"] = weights[f"{p}.{theirs}.bias"]
    return cfg, named


def _linear(x: np.ndarray, w: dict[str, np.ndarray], name: str) -> np.ndarray:
    """``x @ W.T``, plus the layer's bias where the checkpoint has one."""
    y = x @ w[name].T
    return y + w[f"{name}_bias"] if f"{name}_bias" in w else y


def _inv_freq(cfg: RefConfig) -> np.ndarray:
    inv = 1.0 / cfg.theta ** (np.arange(0, cfg.head_dim, 2, dtype=np.float64) / cfg.head_dim)
    s = cfg.rope_scaling or {}
    if s.get("rope_type", s.get("type")) == "llama3":
        factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        old = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        smooth = np.clip((old / wavelen - low) / (high - low), 0.0, 1.0)
        scaled = np.where(wavelen > old / low, inv / factor, inv)
        mid = (wavelen <= old / low) & (wavelen >= old / high)
        inv = np.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)
    return inv


def _rope(x: np.ndarray, positions: np.ndarray, cfg: RefConfig) -> np.ndarray:
    """x: (tokens, heads, head_dim)."""
    angles = positions[:, None].astype(np.float64) * _inv_freq(cfg)[None, :]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    if cfg.rope_pairs:
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out
    half = cfg.head_dim // 2
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def forward(cfg: RefConfig, w: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    """Causal forward over ``tokens`` from position 0; returns logits (len(tokens), vocab)."""
    n, hd = len(tokens), cfg.head_dim
    pos = np.arange(n)
    x = w["embed"][np.asarray(tokens)]
    mask = np.triu(np.full((n, n), -np.inf), k=1)
    group = cfg.heads // cfg.kv_heads
    for i in range(cfg.layers):
        h = _rms(x, w[f"{i}.n1"], cfg.eps)
        q = _rope(_linear(h, w, f"{i}.q").reshape(n, cfg.heads, hd), pos, cfg)
        k = _rope(_linear(h, w, f"{i}.k").reshape(n, cfg.kv_heads, hd), pos, cfg)
        v = _linear(h, w, f"{i}.v").reshape(n, cfg.kv_heads, hd)
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd) + mask
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", scores, v).reshape(n, cfg.heads * hd)
        x = x + _linear(attn, w, f"{i}.o")
        h = _rms(x, w[f"{i}.n2"], cfg.eps)
        gate, up = _linear(h, w, f"{i}.gate"), _linear(h, w, f"{i}.up")
        x = x + _linear(gate / (1 + np.exp(-gate)) * up, w, f"{i}.down")
    return _rms(x, w["norm"], cfg.eps) @ w["head"].T


def greedy(cfg: RefConfig, w: dict[str, np.ndarray], prompt: list[int], steps: int, eos: set[int]) -> list[int]:
    """Greedy continuation by full recomputation (slow, obviously right)."""
    tokens, out = list(prompt), []
    for _ in range(steps):
        nxt = int(np.argmax(forward(cfg, w, tokens)[-1]))
        out.append(nxt)
        if nxt in eos:
            break
        tokens.append(nxt)
    return out
