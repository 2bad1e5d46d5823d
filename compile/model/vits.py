"""VITS inference (the network of Piper voices) in ``tvm.relax.frontend.nn``.

VITS turns phoneme ids into a waveform in two halves whose boundary is data dependent: the text
encoder and stochastic duration predictor give, per phoneme, a prior (mean, log-std) and a log
duration; the number of audio frames is the sum of the rounded-up durations, known only after
the first half ran. So the artifact exports two functions and the runtime joins them:

``encode(phoneme_ids[1, n], noise_w[1, 2, n]) -> (m_p[1, C, n], logs_p[1, C, n], logw[1, 1, n])``
    text encoder (transformer with windowed relative attention) + duration predictor run in its
    reverse (sampling) direction: flows driven by ``noise_w`` (standard normal noise already
    scaled by ``noise_w`` of the voice config).
``decode(z_p[1, C, f]) -> audio[1, 1, f * hop]``
    the normalizing flow run in reverse (prior sample → latent) and the HiFi-GAN generator.

Between them the runtime repeats each phoneme's prior for its frame count and draws
``z_p = m_p + noise * exp(logs_p) * noise_scale`` with a seeded generator, so output is
reproducible. Batch size is 1 (a voice synthesizes one sentence at a time), which makes every
padding mask of the original network all ones; they are left out.

Parameter names are those of the PyTorch model (``enc_p.encoder.attn_layers.0.conv_q.weight``),
except where Piper's export lost or reused them (see ``compile/sources/tts_source.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op, spec

from compile.model.conv_layers import Conv1d, ConvTranspose1d

EXPORTED_FUNCTIONS = ("encode", "decode")

# Constants of the VITS code (not stored in a voice's weights).
LAYER_NORM_EPS = 1e-5
LRELU_SLOPE = 0.1
FINAL_LRELU_SLOPE = 0.01  # the generator's last activation uses PyTorch's default slope
SPLINE_TAIL_BOUND = 5.0
SPLINE_MIN_BIN = 1e-3
SPLINE_MIN_DERIVATIVE = 1e-3
SEARCHSORTED_EPS = 1e-6


@dataclass
class ConvSpec:
    """Geometry of one 1-D convolution (kernel, dilation, padding, stride)."""

    kernel: int
    dilation: int = 1
    padding: int = 0
    stride: int = 1


@dataclass
class VitsConfig:
    """Hyperparameters of a VITS voice, as read back from its exported graph."""

    n_vocab: int
    hidden: int
    filter_channels: int
    n_heads: int
    n_layers: int
    ffn_kernel: int
    window: int
    dp_filter: int
    dp_dilations: list[int]
    dp_kernel: int
    n_dp_flows: int
    spline_bins: int
    n_flows: int
    wn_layers: int
    wn_kernel: int
    wn_dilation_rate: int
    pre_conv: ConvSpec
    post_conv: ConvSpec
    upsample_initial: int
    ups: list[ConvSpec]
    resblocks: list[list[ConvSpec]]
    sample_rate: int
    hop_length: int = field(init=False)

    def __post_init__(self) -> None:
        self.hop_length = int(np.prod([u.stride for u in self.ups]))

    @property
    def kernels_per_upsample(self) -> int:
        return len(self.resblocks) // len(self.ups)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> VitsConfig:
        data = {k: v for k, v in data.items() if k != "hop_length"}
        for key in ("pre_conv", "post_conv"):
            data[key] = ConvSpec(**data[key])
        data["ups"] = [ConvSpec(**u) for u in data["ups"]]
        data["resblocks"] = [[ConvSpec(**c) for c in block] for block in data["resblocks"]]
        return cls(**data)


def _conv(cin: int, cout: int, s: ConvSpec, groups: int = 1, bias: bool = True) -> Conv1d:
    if s.stride != 1:
        raise ValueError(f"strided convolutions are not part of VITS (stride {s.stride})")
    return Conv1d(cin, cout, s.kernel, s.dilation, s.padding, groups, bias)


def _same(kernel: int, dilation: int = 1) -> ConvSpec:
    return ConvSpec(kernel, dilation, (kernel * dilation - dilation) // 2)


def _leaky_relu(x: Tensor, slope: float) -> Tensor:
    return op.maximum(x, x * slope)


def _flip_channels(x: Tensor) -> Tensor:
    """``torch.flip(x, [1])``: the flows' channel permutation."""

    def compute(a: te.Tensor) -> te.Tensor:
        c = a.shape[1]
        return te.compute(a.shape, lambda b, i, t: a[b, c - 1 - i, t], name="flip")

    return op.tensor_expr_op(compute, "flip_channels", [x])


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a ``[B, C, T]`` tensor (VITS ``modules.LayerNorm``)."""

    def __init__(self, channels: int):
        self.channels = channels
        self.gamma = nn.Parameter((channels,), "float32")
        self.beta = nn.Parameter((channels,), "float32")

    def forward(self, x: Tensor) -> Tensor:
        y = op.layer_norm(op.permute_dims(x, [0, 2, 1]), self.channels, self.gamma, self.beta, LAYER_NORM_EPS)
        return op.permute_dims(y, [0, 2, 1])


# -- text encoder -------------------------------------------------------------------------------
def _relative_logits_to_absolute(qe: Tensor, window: int) -> Tensor:
    """``[B, H, T, 2w+1]`` logits per relative offset → ``[B, H, T, T]``, zero beyond the window."""

    def compute(a: te.Tensor) -> te.Tensor:
        b, h, t, _ = a.shape
        return te.compute(
            (b, h, t, t),
            lambda bi, hi, i, j: tirx.if_then_else(
                tirx.abs(j - i) <= window, a[bi, hi, i, j - i + window], tirx.const(0.0, "float32")
            ),
            name="rel_to_abs",
        )

    return op.tensor_expr_op(compute, "relative_to_absolute", [qe])


def _absolute_weights_to_relative(p: Tensor, window: int) -> Tensor:
    """``[B, H, T, T]`` attention weights → ``[B, H, T, 2w+1]`` by relative offset."""

    def compute(a: te.Tensor) -> te.Tensor:
        b, h, t, _ = a.shape
        return te.compute(
            (b, h, t, 2 * window + 1),
            lambda bi, hi, i, r: tirx.if_then_else(
                tirx.all(i + r - window >= 0, i + r - window < t),
                a[bi, hi, i, i + r - window],
                tirx.const(0.0, "float32"),
            ),
            name="abs_to_rel",
        )

    return op.tensor_expr_op(compute, "absolute_to_relative", [p])


class RelativeAttention(nn.Module):
    """Multi-head self-attention with shared relative-position embeddings within ±window."""

    def __init__(self, cfg: VitsConfig):
        c, self.heads, self.window = cfg.hidden, cfg.n_heads, cfg.window
        self.head_dim = c // cfg.n_heads
        one = ConvSpec(1)
        self.conv_q, self.conv_k, self.conv_v, self.conv_o = (_conv(c, c, one) for _ in range(4))
        self.emb_rel_k = nn.Parameter((1, 2 * cfg.window + 1, self.head_dim), "float32")
        self.emb_rel_v = nn.Parameter((1, 2 * cfg.window + 1, self.head_dim), "float32")

    def _heads(self, x: Tensor) -> Tensor:
        b, c, t = x.shape
        return op.permute_dims(op.reshape(x, [b, self.heads, self.head_dim, t]), [0, 1, 3, 2])

    def forward(self, x: Tensor) -> Tensor:
        b, c, t = x.shape
        q = self._heads(self.conv_q(x)) * (1.0 / math.sqrt(self.head_dim))
        k, v = self._heads(self.conv_k(x)), self._heads(self.conv_v(x))
        rel_k = op.reshape(self.emb_rel_k, [2 * self.window + 1, self.head_dim])
        rel_v = op.reshape(self.emb_rel_v, [2 * self.window + 1, self.head_dim])
        scores = op.matmul(q, op.permute_dims(k, [0, 1, 3, 2]))
        scores = scores + _relative_logits_to_absolute(op.matmul(q, op.permute_dims(rel_k, [1, 0])), self.window)
        p = op.softmax(scores, axis=-1)
        out = op.matmul(p, v) + op.matmul(_absolute_weights_to_relative(p, self.window), rel_v)
        out = op.reshape(op.permute_dims(out, [0, 1, 3, 2]), [b, c, t])
        return self.conv_o(out)


class FeedForward(nn.Module):
    def __init__(self, cfg: VitsConfig):
        s = _same(cfg.ffn_kernel)
        self.conv_1 = _conv(cfg.hidden, cfg.filter_channels, s)
        self.conv_2 = _conv(cfg.filter_channels, cfg.hidden, s)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_2(op.relu(self.conv_1(x)))


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: VitsConfig):
        self.attn_layers = nn.ModuleList([RelativeAttention(cfg) for _ in range(cfg.n_layers)])
        self.norm_layers_1 = nn.ModuleList([ChannelLayerNorm(cfg.hidden) for _ in range(cfg.n_layers)])
        self.ffn_layers = nn.ModuleList([FeedForward(cfg) for _ in range(cfg.n_layers)])
        self.norm_layers_2 = nn.ModuleList([ChannelLayerNorm(cfg.hidden) for _ in range(cfg.n_layers)])

    def forward(self, x: Tensor) -> Tensor:
        for attn, norm1, ffn, norm2 in zip(self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2):
            x = norm1(x + attn(x))
            x = norm2(x + ffn(x))
        return x


class TextEncoder(nn.Module):
    def __init__(self, cfg: VitsConfig):
        self.hidden = cfg.hidden
        self.emb = nn.Embedding(cfg.n_vocab, cfg.hidden, "float32")
        self.encoder = TransformerEncoder(cfg)
        self.proj = _conv(cfg.hidden, 2 * cfg.hidden, ConvSpec(1))

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = op.permute_dims(self.emb(ids) * math.sqrt(self.hidden), [0, 2, 1])
        x = self.encoder(x)
        m, logs = op.split(self.proj(x), 2, axis=1)
        return x, m, logs


# -- stochastic duration predictor --------------------------------------------------------------
class DDSConv(nn.Module):
    """Dilated depth-separable convolutions with residual connections."""

    def __init__(self, channels: int, kernel: int, dilations: list[int]):
        self.convs_sep = nn.ModuleList(
            [_conv(channels, channels, _same(kernel, d), groups=channels) for d in dilations]
        )
        self.convs_1x1 = nn.ModuleList([_conv(channels, channels, ConvSpec(1)) for _ in dilations])
        self.norms_1 = nn.ModuleList([ChannelLayerNorm(channels) for _ in dilations])
        self.norms_2 = nn.ModuleList([ChannelLayerNorm(channels) for _ in dilations])

    def forward(self, x: Tensor) -> Tensor:
        for sep, norm1, pointwise, norm2 in zip(self.convs_sep, self.norms_1, self.convs_1x1, self.norms_2):
            y = op.gelu(norm1(sep(x)))
            y = op.gelu(norm2(pointwise(y)))
            x = x + y
        return x


def _bin_index(x: Tensor, knots: Tensor) -> Tensor:
    """``searchsorted``: per element of ``x`` (``[1, 1, T]``), the number of ``knots`` (``[1, 1, T, K+1]``)
    at or below it, minus one, clamped to a valid bin (elements outside the spline are discarded
    later). The count is unrolled over the few knots, so it is elementwise, not a reduction."""

    def compute(a: te.Tensor, k: te.Tensor) -> te.Tensor:
        n_knots = int(k.shape[-1])

        def value(b, c, t):
            count = tirx.const(-1, "int32")
            for i in range(n_knots):
                count = count + tirx.Select(a[b, c, t] >= k[b, c, t, i], tirx.const(1, "int32"), tirx.const(0, "int32"))
            return tirx.max(tirx.min(count, n_knots - 2), 0)

        return te.compute(a.shape, value, name="bin_index")

    return op.tensor_expr_op(compute, "bin_index", [x, knots])


def _take_bin(values: Tensor, index: Tensor) -> Tensor:
    """Per element, ``values[..., index]``."""

    def compute(v: te.Tensor, i: te.Tensor) -> te.Tensor:
        return te.compute(i.shape, lambda b, c, t: v[b, c, t, i[b, c, t]], name="take_bin")

    return op.tensor_expr_op(compute, "take_bin", [values, index])


def _knots(unnormalized: Tensor, bins: int, low: float, high: float) -> tuple[Tensor, Tensor]:
    """Bin sizes → (knot positions ``[..., bins+1]`` from low to high, bin sizes ``[..., bins]``)."""
    sizes = SPLINE_MIN_BIN + (1 - SPLINE_MIN_BIN * bins) * op.softmax(unnormalized, axis=-1)
    inner = op.split(op.cumsum(sizes, axis=-1), [bins - 1], axis=-1)[0] * (high - low) + low
    edge = op.split(sizes, [1], axis=-1)[0] * 0.0
    knots = op.concat([edge + low, inner, edge + high], dim=-1)
    left, right = op.split(knots, [bins], axis=-1)[0], op.split(knots, [1], axis=-1)[1]
    return knots, right - left


def rational_quadratic_inverse(x: Tensor, uw: Tensor, uh: Tensor, ud: Tensor, bins: int) -> Tensor:
    """Inverse of the monotonic rational-quadratic spline with linear tails (Durkan et al. 2019),
    as VITS's ``piecewise_rational_quadratic_transform(inverse=True, tails="linear")``.

    Dense formulation: every element computes its spline and the result is kept only inside
    ``[-B, B]`` (identity outside), instead of the boolean-mask indexing of the original.
    ``x`` is ``[1, 1, T]``; ``uw``, ``uh`` are ``[1, 1, T, bins]``; ``ud`` is ``[1, 1, T, bins-1]``.
    """
    bound = SPLINE_TAIL_BOUND
    edge = math.log(math.exp(1 - SPLINE_MIN_DERIVATIVE) - 1)
    ud = op.pad(ud, [0, 0, 0, 0, 0, 0, 1, 1], value=edge)
    derivatives = SPLINE_MIN_DERIVATIVE + op.softplus(ud)
    cumwidths, widths = _knots(uw, bins, -bound, bound)
    cumheights, heights = _knots(uh, bins, -bound, bound)
    lower_heights, top = op.split(cumheights, [bins], axis=-1)
    index = _bin_index(x, op.concat([lower_heights, top + SEARCHSORTED_EPS], dim=-1))
    d_lo, d_hi = op.split(derivatives, [bins], axis=-1)[0], op.split(derivatives, [1], axis=-1)[1]
    in_cumwidth = _take_bin(op.split(cumwidths, [bins], axis=-1)[0], index)
    in_width = _take_bin(widths, index)
    in_cumheight = _take_bin(lower_heights, index)
    in_height = _take_bin(heights, index)
    in_delta = _take_bin(heights / widths, index)
    in_d, in_d1 = _take_bin(d_lo, index), _take_bin(d_hi, index)
    shifted = x - in_cumheight
    curvature = in_d + in_d1 - 2.0 * in_delta
    a = shifted * curvature + in_height * (in_delta - in_d)
    b = in_height * in_d - shifted * curvature
    c = op.negative(in_delta) * shifted
    root = (2.0 * c) / (op.negative(b) - op.sqrt(b * b - 4.0 * a * c))
    out = root * in_width + in_cumwidth
    outside = op.greater(x * x, Tensor.from_scalar(bound * bound, "float32"))
    return op.where(outside, x, out)


class ConvFlow(nn.Module):
    """Coupling layer of the duration predictor: spline on channel 1 conditioned on channel 0."""

    def __init__(self, cfg: VitsConfig):
        f, self.bins, self.filter = cfg.dp_filter, cfg.spline_bins, cfg.dp_filter
        self.pre = _conv(1, f, ConvSpec(1))
        self.convs = DDSConv(f, cfg.dp_kernel, cfg.dp_dilations)
        self.proj = _conv(f, 3 * cfg.spline_bins - 1, ConvSpec(1))

    def reverse(self, z: Tensor, g: Tensor) -> Tensor:
        z0, z1 = op.split(z, 2, axis=1)
        h = self.proj(self.convs(self.pre(z0) + g))
        b, _, t = h.shape
        h = op.permute_dims(op.reshape(h, [b, 1, 3 * self.bins - 1, t]), [0, 1, 3, 2])
        uw, uh, ud = op.split(h, [self.bins, 2 * self.bins], axis=-1)
        scale = 1.0 / math.sqrt(self.filter)
        z1 = rational_quadratic_inverse(z1, uw * scale, uh * scale, ud, self.bins)
        return op.concat([z0, z1], dim=1)


class ElementwiseAffine(nn.Module):
    def __init__(self, channels: int):
        self.m = nn.Parameter((channels, 1), "float32")
        self.logs = nn.Parameter((channels, 1), "float32")

    def reverse(self, z: Tensor) -> Tensor:
        return (z - self.m) * op.exp(op.negative(self.logs))


class DurationPredictor(nn.Module):
    """VITS ``StochasticDurationPredictor`` in its sampling direction."""

    def __init__(self, cfg: VitsConfig):
        f = cfg.dp_filter
        self.pre = _conv(cfg.hidden, f, ConvSpec(1))
        self.convs = DDSConv(f, cfg.dp_kernel, cfg.dp_dilations)
        self.proj = _conv(f, f, ConvSpec(1))
        self.affine = ElementwiseAffine(2)
        self.conv_flows = nn.ModuleList([ConvFlow(cfg) for _ in range(cfg.n_dp_flows)])

    def forward(self, x: Tensor, noise: Tensor) -> Tensor:
        g = self.proj(self.convs(self.pre(x)))
        z = noise
        for flow in reversed(self.conv_flows):  # the last flow runs first; a channel flip precedes each
            z = flow.reverse(_flip_channels(z), g)
        z = self.affine.reverse(_flip_channels(z))
        return op.split(z, 2, axis=1)[0]


# -- flow and generator -------------------------------------------------------------------------
class WaveNet(nn.Module):
    """Non-causal WaveNet of the coupling layers (gated tanh·sigmoid units, residual + skip)."""

    def __init__(self, cfg: VitsConfig):
        h, n = cfg.hidden, cfg.wn_layers
        self.hidden = h
        self.in_layers = nn.ModuleList(
            [_conv(h, 2 * h, _same(cfg.wn_kernel, cfg.wn_dilation_rate**i)) for i in range(n)]
        )
        self.res_skip_layers = nn.ModuleList(
            [_conv(h, 2 * h if i < n - 1 else h, ConvSpec(1)) for i in range(n)]
        )

    def forward(self, x: Tensor) -> Tensor:
        output = None
        last = len(self.in_layers) - 1
        for i, (inner, res_skip) in enumerate(zip(self.in_layers, self.res_skip_layers)):
            a, b = op.split(inner(x), 2, axis=1)
            acts = res_skip(op.tanh(a) * op.sigmoid(b))
            if i < last:
                res, skip = op.split(acts, 2, axis=1)
                x = x + res
            else:
                skip = acts
            output = skip if output is None else output + skip
        return output


class ResidualCoupling(nn.Module):
    """Mean-only affine coupling: the second half shifts by a function of the first half."""

    def __init__(self, cfg: VitsConfig):
        half = cfg.hidden // 2
        self.pre = _conv(half, cfg.hidden, ConvSpec(1))
        self.enc = WaveNet(cfg)
        self.post = _conv(cfg.hidden, half, ConvSpec(1))

    def reverse(self, z: Tensor) -> Tensor:
        z0, z1 = op.split(z, 2, axis=1)
        return op.concat([z0, z1 - self.post(self.enc(self.pre(z0)))], dim=1)


class Flow(nn.Module):
    def __init__(self, cfg: VitsConfig):
        self.couplings = nn.ModuleList([ResidualCoupling(cfg) for _ in range(cfg.n_flows)])

    def reverse(self, z: Tensor) -> Tensor:
        for coupling in reversed(self.couplings):
            z = coupling.reverse(_flip_channels(z))
        return z


class ResBlock(nn.Module):
    """HiFi-GAN residual block (``ResBlock2``): leaky ReLU → dilated conv, added back, per conv."""

    def __init__(self, channels: int, convs: list[ConvSpec]):
        self.convs = nn.ModuleList([_conv(channels, channels, s) for s in convs])

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = x + conv(_leaky_relu(x, LRELU_SLOPE))
        return x


class Generator(nn.Module):
    """HiFi-GAN generator: transposed convolutions upsample frames to samples."""

    def __init__(self, cfg: VitsConfig):
        ch = cfg.upsample_initial
        self.specs = cfg.ups
        self.per_up = cfg.kernels_per_upsample
        self.conv_pre = _conv(cfg.hidden, ch, cfg.pre_conv)
        ups, blocks = [], []
        for i, u in enumerate(cfg.ups):
            cin, cout = ch // 2**i, ch // 2 ** (i + 1)
            ups.append(ConvTranspose1d(cin, cout, u.kernel, u.stride, u.padding))
            blocks += [ResBlock(cout, convs) for convs in cfg.resblocks[i * self.per_up : (i + 1) * self.per_up]]
        self.ups = nn.ModuleList(ups)
        self.resblocks = nn.ModuleList(blocks)
        self.conv_post = _conv(ch // 2 ** len(cfg.ups), 1, cfg.post_conv, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_pre(x)
        for i, up in enumerate(self.ups):
            x = up(_leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * self.per_up : (i + 1) * self.per_up]
            total = blocks[0](x)
            for block in blocks[1:]:
                total = total + block(x)
            x = total * (1.0 / self.per_up)
        return op.tanh(self.conv_post(_leaky_relu(x, FINAL_LRELU_SLOPE)))


class Vits(nn.Module):
    """The two exported halves of VITS inference (see the module docstring)."""

    def __init__(self, cfg: VitsConfig):
        self.cfg = cfg
        self.enc_p = TextEncoder(cfg)
        self.dp = DurationPredictor(cfg)
        self.flow = Flow(cfg)
        self.dec = Generator(cfg)

    def encode(self, ids: Tensor, noise_w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, m, logs = self.enc_p(ids)
        return m, logs, self.dp(x, noise_w)

    def decode(self, z_p: Tensor) -> Tensor:
        return self.dec(self.flow.reverse(z_p))

    def get_default_spec(self) -> spec.ModuleSpec:
        packed = {"param_mode": "packed", "effect_mode": "none"}
        return spec.ModuleSpec.from_raw(
            {
                "encode": {
                    "ids": spec.Tensor([1, "n"], "int64"),
                    "noise_w": spec.Tensor([1, 2, "n"], "float32"),
                    "$": packed,
                },
                "decode": {"z_p": spec.Tensor([1, self.cfg.hidden, "f"], "float32"), "$": packed},
            },
            self,
        )
