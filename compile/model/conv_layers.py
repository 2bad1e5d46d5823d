"""1-D convolutions lowered to Ferrum's linear layer, so the CPU gets its fast matmul schedule.

TVM's legalized ``conv1d``/``conv1d_transpose`` have no CPU schedule here and run as naive loops
(about 100x slower than ONNX Runtime on a VITS generator). Instead a convolution becomes

- ``conv1d``: an im2col gather (``[T_out, K*C_in]``, zero outside the input) then
  ``linear()`` against the weight viewed as ``[C_out, K*C_in]``;
- ``conv_transpose1d`` (kernel a multiple of the stride, as HiFi-GAN's upsamplers): ``linear()``
  of every input frame against the weight viewed as ``[K*C_out, C_in]``, then an overlap-add
  that sums the ``K / stride`` frames landing on each output sample.

Parameters keep PyTorch's layouts and names (``weight``, ``bias``); the reshaping of the weight
is a small per-call transpose. Depthwise convolutions (the duration predictor's) are an
elementwise kernel with the taps unrolled.
"""

from __future__ import annotations

from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from compile.model.layers import linear
from ferrum.quantization import get_quantization

_F32 = get_quantization("q0f32")


def _with_bias(y_tc: Tensor, bias: nn.Parameter | None) -> Tensor:
    """``[T, C]`` → ``[1, C, T]`` plus bias."""
    t, c = y_tc.shape
    y = op.reshape(op.permute_dims(y_tc, [1, 0]), [1, c, t])
    return y if bias is None else y + op.reshape(bias, [1, c, 1])


class Conv1d(nn.Module):
    """``torch.nn.Conv1d`` (stride 1) on ``[1, C, T]`` tensors."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int = 1, padding: int = 0,
                 groups: int = 1, bias: bool = True):
        self.cin, self.cout, self.kernel = cin, cout, kernel
        self.dilation, self.padding, self.groups = dilation, padding, groups
        self.weight = nn.Parameter((cout, cin // groups, kernel), "float32")
        self.bias = nn.Parameter((cout,), "float32") if bias else None

    def forward(self, x: Tensor) -> Tensor:
        if self.groups != 1:
            return self._depthwise(x)
        cin, k, d, p = self.cin, self.kernel, self.dilation, self.padding

        def im2col(a: te.Tensor) -> te.Tensor:
            t = a.shape[2]

            def value(i, j):
                src = i + (j // cin) * d - p
                return tirx.if_then_else(
                    tirx.all(src >= 0, src < t), a[0, j % cin, src], tirx.const(0.0, "float32")
                )

            return te.compute((t + 2 * p - d * (k - 1), k * cin), value, name="im2col")

        cols = op.tensor_expr_op(im2col, "im2col", [x])
        w = op.reshape(op.permute_dims(self.weight, [0, 2, 1]), [self.cout, k * cin])
        return _with_bias(linear(cols, [w], _F32, "float32"), self.bias)

    def _depthwise(self, x: Tensor) -> Tensor:
        """One filter per channel, the few taps unrolled: an elementwise kernel on every target."""
        if not self.groups == self.cin == self.cout or self.bias is None:
            raise ValueError("only depthwise grouped convolutions with bias are supported")
        k, d, p = self.kernel, self.dilation, self.padding

        def compute(a: te.Tensor, w: te.Tensor, bias: te.Tensor) -> te.Tensor:
            t = a.shape[2]

            def value(b, c, i):
                total = bias[c]
                for tap in range(k):
                    src = i + tap * d - p
                    total = total + w[c, 0, tap] * tirx.if_then_else(
                        tirx.all(src >= 0, src < t), a[b, c, src], tirx.const(0.0, "float32")
                    )
                return total

            return te.compute((a.shape[0], a.shape[1], t + 2 * p - d * (k - 1)), value, name="depthwise_conv")

        return op.tensor_expr_op(compute, "depthwise_conv1d", [x, self.weight, self.bias])


class ConvTranspose1d(nn.Module):
    """``torch.nn.ConvTranspose1d`` on ``[1, C, T]`` tensors, for kernels a multiple of the stride."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int):
        if kernel % stride:
            raise ValueError(f"transposed convolution kernel {kernel} is not a multiple of stride {stride}")
        self.cin, self.cout, self.kernel, self.stride, self.padding = cin, cout, kernel, stride, padding
        self.weight = nn.Parameter((cin, cout, kernel), "float32")
        self.bias = nn.Parameter((cout,), "float32")

    def forward(self, x: Tensor) -> Tensor:
        _, cin, t = x.shape
        cout, k, s, p = self.cout, self.kernel, self.stride, self.padding
        frames = op.permute_dims(op.reshape(x, [cin, t]), [1, 0])
        w = op.reshape(op.permute_dims(self.weight, [2, 1, 0]), [k * cout, cin])
        y = linear(frames, [w], _F32, "float32")  # [T, K*C_out]: y[t, kk*C_out + o]

        def overlap_add(a: te.Tensor, bias: te.Tensor) -> te.Tensor:
            n = a.shape[0]

            def value(b, o, j):
                q, r = (j + p) // s, (j + p) % s
                total = bias[o]
                for i in range(k // s):
                    total = total + tirx.if_then_else(
                        tirx.all(q - i >= 0, q - i < n), a[q - i, (r + i * s) * cout + o], tirx.const(0.0, "float32")
                    )
                return total

            return te.compute((1, cout, (n - 1) * s + k - 2 * p), value, name="overlap_add")

        return op.tensor_expr_op(overlap_add, "overlap_add", [y, self.bias])
