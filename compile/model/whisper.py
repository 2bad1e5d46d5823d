"""OpenAI Whisper (encoder-decoder speech recognizer) in ``tvm.relax.frontend.nn``.

Exported functions (batch 1; the runtime keeps the decoder's self-attention K/V between calls):

- ``encode(mel[n_mels, 3000]) -> (cross_k[L, 1500, D], cross_v[L, D, 1500])``: the audio encoder
  (two conv1d + GELU, sinusoidal positions, pre-LN transformer) followed by every decoder
  layer's cross-attention K/V projection, so cross K/V are computed once per 30 s window.
- ``prefill(ids[n], cross_k, cross_v) -> (logits[1, vocab], self_k[L, n, D], self_v[L, D, n])``
- ``decode(ids[n], cross_k, cross_v, past_k[L, p, D], past_v[L, D, p]) -> (logits, self_k[L, p+n, D],
  self_v[L, D, p+n])``: tokens at positions p..p+n-1; logits of the last token only.

V is kept transposed (feature-major) so the probability x V product reads both operands along
the sequence axis. Every matmul, attention products included, is one TE function whose product
block is named ``LINEAR_BLOCK``, so the CPU schedule (``compile/schedules/cpu.py``) vectorizes it;
convolutions are an im2col gather followed by such a product. Accumulation is float32.
"""

from __future__ import annotations

import math

from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op, spec

from compile.model.layers import LINEAR_BLOCK, linear
from compile.sources.whisper_source import WhisperConfig
from ferrum.quantization import QuantSpec

EXPORTED_FUNCTIONS = ("encode", "prefill", "decode")
N_FRAMES = 3000  # 30 s of 10 ms mel frames; the encoder halves it to n_audio_ctx
F32 = "float32"


def _gelu(v):
    return v * tirx.const(0.5, F32) * (tirx.const(1.0, F32) + tirx.erf(v * tirx.const(1 / math.sqrt(2), F32)))


def linear_bias(x: Tensor, weight: Tensor, bias: Tensor, out_dtype: str, gelu: bool = False) -> Tensor:
    """``x @ W.T + b`` (then exact GELU if asked) as one TE function; W in (out, in) layout."""
    n_out, n_in = (int(s) for s in weight.shape)

    def fused(x: te.Tensor, w: te.Tensor, b: te.Tensor) -> te.Tensor:
        k = te.reduce_axis((0, n_in), name="k")
        acc = te.compute(
            (*x.shape[:-1], n_out),
            lambda *idx: te.sum(x[(*idx[:-1], k)].astype(F32) * w[idx[-1], k].astype(F32), axis=k),
            name=LINEAR_BLOCK,
        )

        def epilogue(*idx):
            v = acc[idx] + b[idx[-1]].astype(F32)
            return (_gelu(v) if gelu else v).astype(out_dtype)

        return te.compute(acc.shape, epilogue, name="bias")

    return op.tensor_expr_op(fused, "linear_bias_gelu" if gelu else "linear_bias", [x, weight, bias])


def attention_scores(q: Tensor, k: Tensor, layer: int | None, heads: int, causal: bool, flat: bool) -> Tensor:
    """Softmax input ``(n, heads, m)``: ``q[n, D] . k[m, D] / sqrt(head_dim)`` per head, k read
    from ``k[layer]`` when ``layer`` is given; ``causal`` masks key j > query i + (m - n).

    ``flat`` (CPU, static key count: encoder and cross-attention) computes the product as
    ``(n, heads * m)``, so the CPU schedule's tiles run over key rows of one head while every
    query passes over them (heads in the leading loops would stream all queries through cache
    once per tile). Otherwise it is ``(n, heads, m)``: no division of the output index, which
    dlight's GPU rules cannot analyse (and a symbolic length could not be divided by)."""
    hd = int(q.shape[1]) // heads
    scale = tirx.const(1 / math.sqrt(hd), F32)
    static = flat and isinstance(k.shape[-2], int)

    def fused(q: te.Tensor, k: te.Tensor) -> te.Tensor:
        n, m = q.shape[0], k.shape[-2]
        c = te.reduce_axis((0, hd), name="c")

        def product(i, h, j):
            key = k[layer, j, h * hd + c] if layer is not None else k[j, h * hd + c]
            return te.sum(q[i, h * hd + c].astype(F32) * key.astype(F32), axis=c)

        def epilogue(value, i, j):
            if not causal:
                return value * scale
            return tirx.if_then_else(j <= i + (m - n), value * scale, tirx.min_value(F32))

        if static:
            acc = te.compute((n, heads * m), lambda i, hj: product(i, hj // m, hj % m), name=LINEAR_BLOCK)
            return te.compute(acc.shape, lambda i, hj: epilogue(acc[i, hj], i, hj % m), name="scale")
        acc = te.compute((n, heads, m), product, name=LINEAR_BLOCK)
        return te.compute(acc.shape, lambda i, h, j: epilogue(acc[i, h, j], i, j), name="scale")

    scores = op.tensor_expr_op(fused, "attention_scores", [q, k])
    return op.reshape(scores, (q.shape[0], heads, k.shape[-2])) if static else scores


def attention_values(p: Tensor, vt: Tensor, layer: int | None, out_dtype: str, flat: bool) -> Tensor:
    """``out[n, D]``: per head, probabilities ``p[n, h, m]`` times V, given transposed as
    ``vt[D, m]`` (or ``vt[layer]``). ``flat`` (CPU) writes ``(n, D)`` directly, reading the head
    as ``column // head_dim``; otherwise ``(n, heads, head_dim)`` is written and reshaped, as
    dlight's GPU rules cannot analyse a divided output index."""
    heads = int(p.shape[1])
    hd = int(vt.shape[-2]) // heads

    def fused(p: te.Tensor, vt: te.Tensor) -> te.Tensor:
        n, m = p.shape[0], p.shape[2]
        j = te.reduce_axis((0, m), name="j")

        def value(col, pos):
            return (vt[layer, col, pos] if layer is not None else vt[col, pos]).astype(F32)

        if flat:
            acc = te.compute(
                (n, heads * hd), lambda i, col: te.sum(p[i, col // hd, j] * value(col, j), axis=j), name=LINEAR_BLOCK
            )
        else:
            acc = te.compute(
                (n, heads, hd), lambda i, h, c: te.sum(p[i, h, j] * value(h * hd + c, j), axis=j), name=LINEAR_BLOCK
            )
        return te.compute(acc.shape, lambda *idx: acc[idx].astype(out_dtype), name="cast")

    out = op.tensor_expr_op(fused, "attention_values", [p, vt])
    return out if flat else op.reshape(out, (p.shape[0], heads * hd))


def attend(
    q: Tensor, k: Tensor, vt: Tensor, layer: int | None, heads: int, causal: bool, dtype: str, flat: bool
) -> Tensor:
    probs = op.softmax(attention_scores(q, k, layer, heads, causal, flat), axis=-1)
    return attention_values(probs, vt, layer, dtype, flat)


def im2col(x: Tensor, kernel: int, stride: int, time_major: bool) -> Tensor:
    """Columns ``(t_out, channels * kernel)`` of a padding-1 conv1d input, column ``c * kernel + k``
    (the flattened (out, in, k) weight's order). ``x`` is (channels, time) or (time, channels)."""
    length, channels = (x.shape[0], x.shape[1]) if time_major else (x.shape[1], x.shape[0])
    out_len = (int(length) + 2 - kernel) // stride + 1

    def gather(x: te.Tensor) -> te.Tensor:
        def col(t, q):
            c, kk = q // kernel, q % kernel
            pos = t * stride + kk - 1
            inside = tirx.all(pos >= 0, pos < length)
            safe = tirx.max(tirx.min(pos, length - 1), 0)
            value = x[safe, c] if time_major else x[c, safe]
            return tirx.if_then_else(inside, value, tirx.const(0, x.dtype))

        return te.compute((out_len, int(channels) * kernel), col, name="im2col")

    return op.tensor_expr_op(gather, "im2col", [x])


class Linear(nn.Module):
    def __init__(self, n_in: int, n_out: int, dtype: str):
        self.weight = nn.Parameter((n_out, n_in), dtype)
        self.bias = nn.Parameter((n_out,), dtype)

    def forward(self, x: Tensor, gelu: bool = False) -> Tensor:
        return linear_bias(x, self.weight, self.bias, self.weight.dtype, gelu)


class Conv1d(nn.Module):
    """conv1d, padding 1, as im2col + product; weight stored flattened to (out, in * kernel)."""

    def __init__(self, n_in: int, n_out: int, kernel: int, stride: int, dtype: str):
        self.kernel, self.stride = kernel, stride
        self.weight = nn.Parameter((n_out, n_in * kernel), dtype)
        self.bias = nn.Parameter((n_out,), dtype)

    def forward(self, x: Tensor, time_major: bool) -> Tensor:
        cols = im2col(x, self.kernel, self.stride, time_major)
        return linear_bias(cols, self.weight, self.bias, self.weight.dtype, gelu=True)


class MLP(nn.Module):
    def __init__(self, cfg: WhisperConfig, dtype: str):
        self.fc1 = Linear(cfg.d_model, cfg.ffn_dim, dtype)
        self.fc2 = Linear(cfg.ffn_dim, cfg.d_model, dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.fc1(x, gelu=True))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: WhisperConfig, dtype: str, flat: bool):
        self.heads, self.dtype, self.flat = cfg.n_heads, dtype, flat
        self.attn_ln = nn.LayerNorm(cfg.d_model, dtype=dtype)
        self.qkv = Linear(cfg.d_model, 3 * cfg.d_model, dtype)
        self.out = Linear(cfg.d_model, cfg.d_model, dtype)
        self.mlp_ln = nn.LayerNorm(cfg.d_model, dtype=dtype)
        self.mlp = MLP(cfg, dtype)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = op.split(self.qkv(self.attn_ln(x)), 3, axis=-1)
        x = x + self.out(attend(q, k, op.permute_dims(v, [1, 0]), None, self.heads, False, self.dtype, self.flat))
        return x + self.mlp(self.mlp_ln(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: WhisperConfig, dtype: str, flat: bool):
        d = cfg.d_model
        self.heads, self.dtype, self.flat = cfg.n_heads, dtype, flat
        self.self_ln = nn.LayerNorm(d, dtype=dtype)
        self.self_qkv = Linear(d, 3 * d, dtype)
        self.self_out = Linear(d, d, dtype)
        self.cross_ln = nn.LayerNorm(d, dtype=dtype)
        self.cross_q = Linear(d, d, dtype)
        self.cross_kv = Linear(d, 2 * d, dtype)
        self.cross_out = Linear(d, d, dtype)
        self.mlp_ln = nn.LayerNorm(d, dtype=dtype)
        self.mlp = MLP(cfg, dtype)

    def cross_kv_of(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """This layer's cross-attention (K[1500, D], V transposed [D, 1500]) from the encoder output."""
        k, v = op.split(self.cross_kv(audio), 2, axis=-1)
        return k, op.permute_dims(v, [1, 0])

    def forward(self, x, layer, cross_k, cross_v, past_k, past_v):
        """Returns the new hidden states and this layer's full self K (p+n, D) and V^T (D, p+n)."""
        q, k, v = op.split(self.self_qkv(self.self_ln(x)), 3, axis=-1)
        if past_k is not None:
            k, vt = _append_kv(past_k, past_v, k, v, layer)
        else:
            vt = op.permute_dims(v, [1, 0])
        x = x + self.self_out(attend(q, k, vt, None, self.heads, True, self.dtype, self.flat))
        cq = self.cross_q(self.cross_ln(x))
        x = x + self.cross_out(attend(cq, cross_k, cross_v, layer, self.heads, False, self.dtype, self.flat))
        return x + self.mlp(self.mlp_ln(x)), k, vt


def _append_kv(past_k: Tensor, past_v: Tensor, k: Tensor, v: Tensor, layer: int) -> tuple[Tensor, Tensor]:
    """Layer ``layer``'s cached K (p, D) / V^T (D, p) followed by this call's n new positions."""
    def join(pk: te.Tensor, pv: te.Tensor, k: te.Tensor, v: te.Tensor):
        p, (n, d) = pk.shape[1], k.shape
        full_k = te.compute(
            (p + n, d), lambda j, c: tirx.if_then_else(j < p, pk[layer, j, c], k[tirx.max(j - p, 0), c]), name="k_full"
        )
        full_vt = te.compute(
            (d, p + n), lambda c, j: tirx.if_then_else(j < p, pv[layer, c, j], v[tirx.max(j - p, 0), c]), name="vt_full"
        )
        return [full_k, full_vt]

    full_k, full_vt = op.tensor_expr_op(join, "append_kv", [past_k, past_v, k, v])
    return full_k, full_vt


class WhisperModel(nn.Module):
    def __init__(self, cfg: WhisperConfig, quant: QuantSpec, gpu: bool):
        """``gpu`` (the target's) picks the attention-score layout (see ``attention_scores``);
        weights and results are the same for both."""
        dt = quant.model_dtype
        flat = not gpu
        self.cfg, self.quant, self.dtype = cfg, quant, dt
        d = cfg.d_model
        self.conv1 = Conv1d(cfg.n_mels, d, 3, 1, dt)
        self.conv2 = Conv1d(d, d, 3, 2, dt)
        self.audio_positions = nn.Parameter((cfg.n_audio_ctx, d), dt)
        self.encoder_layers = nn.ModuleList([EncoderLayer(cfg, dt, flat) for _ in range(cfg.n_encoder_layers)])
        self.encoder_ln = nn.LayerNorm(d, dtype=dt)
        self.token_embedding = nn.Parameter((cfg.vocab_size, d), dt)
        self.text_positions = nn.Parameter((cfg.n_text_ctx, d), dt)
        self.decoder_layers = nn.ModuleList([DecoderLayer(cfg, dt, flat) for _ in range(cfg.n_decoder_layers)])
        self.decoder_ln = nn.LayerNorm(d, dtype=dt)

    def encode(self, mel: Tensor):
        x = self.conv2(self.conv1(mel, time_major=False), time_major=True)
        x = x + self.audio_positions
        for layer in self.encoder_layers:
            x = layer(x)
        audio = self.encoder_ln(x)
        ks, vs = zip(*(layer.cross_kv_of(audio) for layer in self.decoder_layers))
        d, ctx = self.cfg.d_model, self.cfg.n_audio_ctx
        cross_k = op.concat([op.reshape(k, (1, ctx, d)) for k in ks], dim=0)
        cross_v = op.concat([op.reshape(v, (1, d, ctx)) for v in vs], dim=0)
        return cross_k, cross_v

    def _embed(self, ids: Tensor, past: Tensor | None) -> Tensor:
        """Token embeddings plus learned positions p..p+n-1 (p = cached length)."""
        d = self.cfg.d_model

        def positions(ids: te.Tensor, table: te.Tensor, *past: te.Tensor) -> te.Tensor:
            offset = past[0].shape[1] if past else 0
            return te.compute((ids.shape[0], d), lambda i, c: table[i + offset, c], name="positions")

        inputs = [ids, self.text_positions] + ([past] if past is not None else [])
        return op.take(self.token_embedding, ids, axis=0) + op.tensor_expr_op(positions, "text_positions", inputs)

    def _decoder(self, ids, cross_k, cross_v, past_k=None, past_v=None):
        x = self._embed(ids, past_k)
        ks, vts = [], []
        for i, layer in enumerate(self.decoder_layers):
            x, k, vt = layer(x, i, cross_k, cross_v, past_k, past_v)
            ks.append(op.reshape(k, (1, *k.shape)))
            vts.append(op.reshape(vt, (1, *vt.shape)))
        def last(h: te.Tensor) -> te.Tensor:
            return te.compute((1, h.shape[1]), lambda _, c: h[h.shape[0] - 1, c], name="last_token")

        hidden = self.decoder_ln(op.tensor_expr_op(last, "last_token", [x]))
        logits = linear(hidden, [self.token_embedding], self.quant, F32)
        return logits, op.concat(ks, dim=0), op.concat(vts, dim=0)

    def prefill(self, ids: Tensor, cross_k: Tensor, cross_v: Tensor):
        return self._decoder(ids, cross_k, cross_v)

    def decode(self, ids: Tensor, cross_k: Tensor, cross_v: Tensor, past_k: Tensor, past_v: Tensor):
        return self._decoder(ids, cross_k, cross_v, past_k, past_v)

    def get_default_spec(self) -> spec.ModuleSpec:
        cfg, dt = self.cfg, self.dtype
        n_layers, d, ctx = cfg.n_decoder_layers, cfg.d_model, cfg.n_audio_ctx
        packed = {"param_mode": "packed", "effect_mode": "none"}
        cross = {"cross_k": spec.Tensor([n_layers, ctx, d], dt), "cross_v": spec.Tensor([n_layers, d, ctx], dt)}
        return spec.ModuleSpec.from_raw(
            {
                "encode": {"mel": spec.Tensor([cfg.n_mels, N_FRAMES], dt), "$": packed},
                "prefill": {"ids": spec.Tensor(["n"], "int32"), **cross, "$": packed},
                "decode": {
                    "ids": spec.Tensor(["n"], "int32"),
                    **cross,
                    "past_k": spec.Tensor([n_layers, "p", d], dt),
                    "past_v": spec.Tensor([n_layers, d, "p"], dt),
                    "$": packed,
                },
            },
            self,
        )
