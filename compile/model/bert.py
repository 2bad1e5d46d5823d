"""BERT sentence encoder in ``tvm.relax.frontend.nn``: token ids in, pooled embeddings out.

One exported function does the whole model, so the runtime only tokenizes, pads and calls it:

- ``embed(input_ids[b, s], token_type_ids[b, s], attention_mask[b, s]) -> float32[b, hidden]``

``b`` and ``s`` are symbolic: any batch of right-padded sequences of any length up to the
position table. The mask (1 = token, 0 = padding) becomes an additive bias on the attention
scores so padding is never attended to, and weights the mean pooling so padding never counts;
padded rows therefore give the same vector as the sequence run alone. Then the vector is L2
normalized when the model's sentence-transformers pipeline says so.

Precision: linear layers and the attention products accumulate in float32;
LayerNorm, softmax, pooling and normalization run in float32 whatever the model dtype, so a
float16 build only rounds the stored weights and the activations between layers.
"""

from __future__ import annotations

from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op, spec

from compile.model.layers import LINEAR_BLOCK
from ferrum.embedding_config import BertConfig
from ferrum.quantization import QuantSpec

EXPORTED_FUNCTIONS = ("embed",)
MASK_BIAS = -1e9  # added to scores of padded keys: exp() of it is exactly 0 in float32


class LayerNorm(nn.Module):
    """LayerNorm with float32 parameters, computed in float32, returning ``dtype``."""

    def __init__(self, dim: int, eps: float, dtype: str):
        self.dim, self.eps, self.dtype = dim, eps, dtype
        self.weight = nn.Parameter((dim,), "float32")
        self.bias = nn.Parameter((dim,), "float32")

    def forward(self, x: Tensor) -> Tensor:
        y = op.layer_norm(x.astype("float32"), self.dim, self.weight, self.bias, self.eps)
        return y if self.dtype == "float32" else y.astype(self.dtype)


def _dense(x: Tensor, weight: Tensor, bias: Tensor, gelu: bool) -> Tensor:
    """``x @ W.T + b`` (then exact GELU) as ONE TensorIR function: the float32 product block is
    named ``LINEAR_BLOCK`` for the CPU schedule, and bias, activation and cast are a single
    epilogue block it computes right after each tile. (Relax's own GELU fused behind the linear
    is several blocks that the schedule cannot all place per tile, which made it ~30x slower.)"""
    n_out, n_in = (int(d) for d in weight.shape)
    dtype = weight.dtype

    def fused(x: te.Tensor, w: te.Tensor, b: te.Tensor) -> te.Tensor:
        k = te.reduce_axis((0, n_in), name="k")
        acc = te.compute(
            (*x.shape[:-1], n_out),
            lambda *i: te.sum(x[(*i[:-1], k)].astype("float32") * w[i[-1], k].astype("float32"), axis=k),
            name=LINEAR_BLOCK,
        )

        def epilogue(*i):
            y = acc[i] + b[i[-1]].astype("float32")
            if gelu:  # BERT's "gelu": 0.5 x (1 + erf(x / sqrt 2))
                y = 0.5 * y * (1.0 + tirx.erf(y * 0.7071067811865476))
            return y.astype(dtype)

        return te.compute(acc.shape, epilogue, name="bias_act")

    return op.tensor_expr_op(fused, "dense_gelu" if gelu else "dense", [x, weight, bias])


class Dense(nn.Module):
    """``x @ W.T + b`` (optionally followed by GELU) with W in its stored (out, in) layout."""

    def __init__(self, in_features: int, out_features: int, q: QuantSpec, gelu: bool = False):
        self.gelu = gelu
        self.weight = nn.Parameter((out_features, in_features), q.model_dtype)
        self.bias = nn.Parameter((out_features,), q.model_dtype)

    def forward(self, x: Tensor) -> Tensor:
        return _dense(x, self.weight, self.bias, self.gelu)


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig, q: QuantSpec):
        dt = q.model_dtype
        self.word_embeddings = nn.Module()
        self.word_embeddings.weight = nn.Parameter((cfg.vocab_size, cfg.hidden_size), dt)
        self.position_embeddings = nn.Module()
        self.position_embeddings.weight = nn.Parameter((cfg.max_position_embeddings, cfg.hidden_size), dt)
        self.token_type_embeddings = nn.Module()
        self.token_type_embeddings.weight = nn.Parameter((cfg.type_vocab_size, cfg.hidden_size), dt)
        self.LayerNorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, dt)

    def forward(self, ids: Tensor, types: Tensor) -> Tensor:
        def gather(ids: te.Tensor, types: te.Tensor, word: te.Tensor, pos: te.Tensor, tt: te.Tensor) -> te.Tensor:
            b, s = ids.shape
            return te.compute(
                (b, s, word.shape[1]),
                lambda i, j, k: word[ids[i, j], k].astype("float32")
                + pos[j, k].astype("float32")
                + tt[types[i, j], k].astype("float32"),
                name="bert_embed",
            )

        summed = op.tensor_expr_op(
            gather,
            "bert_embed",
            [ids, types, self.word_embeddings.weight, self.position_embeddings.weight,
             self.token_type_embeddings.weight],
        )
        return self.LayerNorm(summed)


class BertSelfAttention(nn.Module):
    """Fused QKV projection; scores in float32 with the padding bias; softmax in float32."""

    def __init__(self, cfg: BertConfig, q: QuantSpec):
        self.heads, self.head_dim, self.dtype = cfg.num_attention_heads, cfg.head_dim, q.model_dtype
        self.qkv = Dense(cfg.hidden_size, 3 * cfg.hidden_size, q)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        b, s, d = x.shape
        qkv = op.reshape(self.qkv(x), (b, s, 3, self.heads, self.head_dim))
        qkv = op.permute_dims(qkv, [2, 0, 3, 1, 4])  # (3, b, heads, s, head_dim)
        q, k, v = (op.squeeze(t, 0) for t in op.split(qkv, 3, axis=0))
        scores = op.matmul(q, op.permute_dims(k, [0, 1, 3, 2]), out_dtype="float32")
        probs = op.softmax(scores * (self.head_dim**-0.5) + bias, axis=-1)
        ctx = op.matmul(probs.astype(self.dtype), v, out_dtype=self.dtype)  # (b, heads, s, head_dim)
        return op.reshape(op.permute_dims(ctx, [0, 2, 1, 3]), (b, s, d))


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig, q: QuantSpec):
        self.self = BertSelfAttention(cfg, q)
        self.output = nn.Module()
        self.output.dense = Dense(cfg.hidden_size, cfg.hidden_size, q)
        self.output.LayerNorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, q.model_dtype)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        return self.output.LayerNorm(self.output.dense(self.self(x, bias)) + x)


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig, q: QuantSpec):
        self.attention = BertAttention(cfg, q)
        self.intermediate = nn.Module()
        self.intermediate.dense = Dense(cfg.hidden_size, cfg.intermediate_size, q, gelu=True)
        self.output = nn.Module()
        self.output.dense = Dense(cfg.intermediate_size, cfg.hidden_size, q)
        self.output.LayerNorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, q.model_dtype)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        x = self.attention(x, bias)
        return self.output.LayerNorm(self.output.dense(self.intermediate.dense(x)) + x)


def _pool(hidden: Tensor, mask: Tensor, normalize: bool) -> Tensor:
    """Masked mean over tokens, then (optionally) division by the L2 norm, in float32."""

    def pool(h: te.Tensor, m: te.Tensor) -> te.Tensor:
        b, s, d = h.shape
        j = te.reduce_axis((0, s), name="j")
        total = te.compute((b, d), lambda i, k: te.sum(h[i, j, k].astype("float32") * m[i, j].astype("float32"), axis=j), name="masked_sum")
        j2 = te.reduce_axis((0, s), name="j2")
        count = te.compute((b,), lambda i: te.sum(m[i, j2].astype("float32"), axis=j2), name="token_count")
        mean = te.compute((b, d), lambda i, k: total[i, k] / tirx.max(count[i], tirx.const(1e-9, "float32")), name="mean")
        if not normalize:
            return mean
        k2 = te.reduce_axis((0, d), name="k2")
        sq = te.compute((b,), lambda i: te.sum(mean[i, k2] * mean[i, k2], axis=k2), name="sq_norm")
        return te.compute(
            (b, d), lambda i, k: mean[i, k] / tirx.max(tirx.sqrt(sq[i]), tirx.const(1e-12, "float32")), name="l2_normalize"
        )

    return op.tensor_expr_op(pool, "mean_pool", [hidden, mask])


class BertEmbedder(nn.Module):
    """Encoder + pooling; parameter names are Hugging Face ``BertModel``'s except the fused
    ``attention.self.qkv`` (query, key, value rows stacked)."""

    def __init__(self, cfg: BertConfig, q: QuantSpec):
        self.cfg, self.quant = cfg, q
        self.embeddings = BertEmbeddings(cfg, q)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([BertLayer(cfg, q) for _ in range(cfg.num_hidden_layers)])

    def embed(self, input_ids: Tensor, token_type_ids: Tensor, attention_mask: Tensor) -> Tensor:
        b, s = attention_mask.shape
        keep = op.reshape(attention_mask.astype("float32"), (b, 1, 1, s))
        bias = (1.0 - keep) * MASK_BIAS
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.encoder.layer:
            x = layer(x, bias)
        return _pool(x, attention_mask, self.cfg.normalize)

    def get_default_spec(self) -> spec.ModuleSpec:
        ids = spec.Tensor(["batch", "seq"], "int32")
        return spec.ModuleSpec.from_raw(
            {
                "embed": {
                    "input_ids": ids,
                    "token_type_ids": ids,
                    "attention_mask": ids,
                    "$": {"param_mode": "packed", "effect_mode": "none"},
                }
            },
            self,
        )
