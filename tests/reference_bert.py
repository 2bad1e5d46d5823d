"""An independent numpy BERT sentence encoder, float64, read straight from the safetensors file.

Written from the BERT paper / Hugging Face ``BertModel`` semantics and sentence-transformers'
mean pooling + L2 normalization, sharing no code with ``compile/``: it is what the compiled model
is checked against. One sequence at a time, unpadded, so it also checks that padding and the
attention mask in the batched compiled function change nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


class ReferenceBert:
    def __init__(self, folder: Path):
        self.cfg = json.loads((folder / "config.json").read_text())
        self.w = {k.removeprefix("bert."): v.astype(np.float64) for k, v in load_file(str(folder / "model.safetensors")).items()}
        self.heads = self.cfg["num_attention_heads"]
        self.eps = self.cfg.get("layer_norm_eps", 1e-12)

    def _ln(self, x: np.ndarray, prefix: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.eps) * self.w[f"{prefix}.weight"] + self.w[f"{prefix}.bias"]

    def _dense(self, x: np.ndarray, prefix: str) -> np.ndarray:
        return x @ self.w[f"{prefix}.weight"].T + self.w[f"{prefix}.bias"]

    def token_states(self, ids: list[int]) -> np.ndarray:
        n = len(ids)
        x = (self.w["embeddings.word_embeddings.weight"][ids]
             + self.w["embeddings.position_embeddings.weight"][:n]
             + self.w["embeddings.token_type_embeddings.weight"][0])
        x = self._ln(x, "embeddings.LayerNorm")
        d = x.shape[1]
        hd = d // self.heads
        erf = np.vectorize(math.erf)
        for i in range(self.cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}"
            q, k, v = (self._dense(x, f"{p}.attention.self.{t}").reshape(n, self.heads, hd).transpose(1, 0, 2)
                       for t in ("query", "key", "value"))
            s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
            s = np.exp(s - s.max(-1, keepdims=True))
            ctx = (s / s.sum(-1, keepdims=True)) @ v
            attn = self._dense(ctx.transpose(1, 0, 2).reshape(n, d), f"{p}.attention.output.dense")
            x = self._ln(attn + x, f"{p}.attention.output.LayerNorm")
            h = self._dense(x, f"{p}.intermediate.dense")
            h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
            x = self._ln(self._dense(h, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
        return x

    def embed(self, ids: list[int]) -> np.ndarray:
        """Mean over tokens, then unit length (all-MiniLM-L6-v2's pooling and Normalize)."""
        v = self.token_states(ids).mean(0)
        return v / max(np.linalg.norm(v), 1e-12)
