"""An independent numpy Whisper (float64) from CTranslate2 tensors, to check the compiled model.

Written from the Whisper paper/architecture, not from compile/model/whisper.py: conv1d as a
sum of shifted products, sinusoidal audio positions computed from the formula (not read from
the checkpoint), multi-head attention per head with explicit causal masks, no K/V cache.
"""

from __future__ import annotations

import numpy as np


def erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7)."""
    sign = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-x * x))


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def sinusoids(length: int, channels: int) -> np.ndarray:
    increment = np.log(10000) / (channels // 2 - 1)
    inv = np.exp(-increment * np.arange(channels // 2))
    t = np.arange(length)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1)


def conv1d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """x (C_in, T), w (C_out, C_in, 3), padding 1 → (C_out, T_out)."""
    xp = np.pad(x, ((0, 0), (1, 1)))
    t_out = (x.shape[1] - 1) // stride + 1
    out = np.zeros((w.shape[0], t_out)) + b[:, None]
    for k in range(w.shape[2]):
        out += w[:, :, k] @ xp[:, k : k + stride * (t_out - 1) + 1 : stride]
    return out


class ReferenceWhisper:
    def __init__(self, arrays: dict[str, np.ndarray]):
        self.a = {k: np.asarray(v, np.float64) for k, v in arrays.items()}
        self.heads = int(arrays["encoder/num_heads"])

    def _linear(self, x, prefix):
        return x @ self.a[f"{prefix}/weight"].T + self.a[f"{prefix}/bias"]

    def _ln(self, x, prefix):
        return layer_norm(x, self.a[f"{prefix}/gamma"], self.a[f"{prefix}/beta"])

    def _attention(self, q, k, v, causal: bool):
        n, d = q.shape
        hd = d // self.heads
        out = np.zeros_like(q)
        for h in range(self.heads):
            s = slice(h * hd, (h + 1) * hd)
            scores = q[:, s] @ k[:, s].T / np.sqrt(hd)
            if causal:
                scores = np.where(np.tril(np.ones((n, k.shape[0]), bool), k.shape[0] - n), scores, -np.inf)
            p = np.exp(scores - scores.max(-1, keepdims=True))
            out[:, s] = (p / p.sum(-1, keepdims=True)) @ v[:, s]
        return out

    def encoder(self, mel: np.ndarray) -> np.ndarray:
        a = self.a
        x = gelu(conv1d(mel.astype(np.float64), a["encoder/conv1/weight"], a["encoder/conv1/bias"], 1))
        x = gelu(conv1d(x, a["encoder/conv2/weight"], a["encoder/conv2/bias"], 2)).T
        x = x + sinusoids(*x.shape)
        i = 0
        while f"encoder/layer_{i}/ffn/linear_0/weight" in a:
            p = f"encoder/layer_{i}"
            q, k, v = np.split(self._linear(self._ln(x, f"{p}/self_attention/layer_norm"), f"{p}/self_attention/linear_0"), 3, -1)
            x = x + self._linear(self._attention(q, k, v, False), f"{p}/self_attention/linear_1")
            h = self._ln(x, f"{p}/ffn/layer_norm")
            x = x + self._linear(gelu(self._linear(h, f"{p}/ffn/linear_0")), f"{p}/ffn/linear_1")
            i += 1
        return self._ln(x, "encoder/layer_norm")

    def cross_kv(self, audio: np.ndarray, layer: int) -> tuple[np.ndarray, np.ndarray]:
        return tuple(np.split(self._linear(audio, f"decoder/layer_{layer}/attention/linear_1"), 2, -1))

    def logits(self, audio: np.ndarray, tokens: list[int]) -> np.ndarray:
        """Logits after the last of ``tokens`` (whole sequence recomputed, no cache)."""
        a = self.a
        x = a["decoder/embeddings/weight"][tokens] + a["decoder/position_encodings/encodings"][: len(tokens)]
        i = 0
        while f"decoder/layer_{i}/ffn/linear_0/weight" in a:
            p = f"decoder/layer_{i}"
            q, k, v = np.split(self._linear(self._ln(x, f"{p}/self_attention/layer_norm"), f"{p}/self_attention/linear_0"), 3, -1)
            x = x + self._linear(self._attention(q, k, v, True), f"{p}/self_attention/linear_1")
            q = self._linear(self._ln(x, f"{p}/attention/layer_norm"), f"{p}/attention/linear_0")
            k, v = self.cross_kv(audio, i)
            x = x + self._linear(self._attention(q, k, v, False), f"{p}/attention/linear_2")
            h = self._ln(x, f"{p}/ffn/layer_norm")
            x = x + self._linear(gelu(self._linear(h, f"{p}/ffn/linear_0")), f"{p}/ffn/linear_1")
            i += 1
        return self._ln(x[-1], "decoder/layer_norm") @ a["decoder/embeddings/weight"].T
