"""Pure-torch reference of the integer GEMM core: exact integer semantics, the test oracle.

Accumulation happens in int64 and is checked to fit int32 (what every real int8 kernel
accumulates in), so a backend that matches these accumulators bit-exactly is correct.
Convolutions are lowered with im2col: the input is padded with its zero point (the code
of float 0.0), so padding contributes exactly zero, as in the float model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from quantune.kernels.epilogue import Epilogue, apply_activation, requantize
from quantune.kernels.weights import QuantizedWeight

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def _to_int32(acc: torch.Tensor) -> torch.Tensor:
    if acc.numel() and (int(acc.min()) < _INT32_MIN or int(acc.max()) > _INT32_MAX):
        raise OverflowError("int32 accumulator overflow: reduce K or the code ranges.")
    return acc.to(torch.int32)


def linear_accumulate(qx: torch.Tensor, x_zero_point: int, weight: QuantizedWeight) -> torch.Tensor:
    """``acc[m, n] = sum_k (qx[m,k] - zx) * (qw[n,k] - zw[n])`` as int32, ``qx`` of shape [..., K]."""
    # int64 matmul exists on CPU only: the oracle computes there and moves back.
    x = qx.cpu().to(torch.int64) - int(x_zero_point)
    w = weight.codes.cpu().to(torch.int64).reshape(weight.out_channels, -1)
    w = w - weight.per_channel_zero_point().cpu().to(torch.int64)[:, None]
    lead = x.shape[:-1]
    acc = x.reshape(-1, x.shape[-1]) @ w.t()
    return _to_int32(acc).reshape(*lead, weight.out_channels).to(qx.device)


def conv2d_accumulate(
    qx: torch.Tensor,
    x_zero_point: int,
    weight: QuantizedWeight,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """int32 accumulators of a grouped 2-D convolution over NCHW integer codes."""
    device = qx.device
    qx, weight = qx.cpu(), _cpu_weight(weight)
    n, c, h, w_in = qx.shape
    cout, cin_g, kh, kw = weight.codes.shape
    # Codes minus zero point are small integers: exact in float32 for im2col.
    x = qx.to(torch.float32) - float(x_zero_point)
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w_in + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    cols = cols.to(torch.int64).reshape(n, groups, cin_g * kh * kw, oh * ow)
    wq = weight.codes.to(torch.int64).reshape(groups, cout // groups, cin_g * kh * kw)
    wq = wq - weight.per_channel_zero_point().to(torch.int64).reshape(groups, -1, 1)
    acc = _grouped_mm(wq, cols)
    return _to_int32(acc.reshape(n, cout, oh, ow)).to(device)


def _cpu_weight(weight: QuantizedWeight) -> QuantizedWeight:
    if weight.codes.device.type == "cpu":
        return weight
    return QuantizedWeight(weight.codes.cpu(), weight.bits, weight.scale.cpu(), weight.zero_point.cpu())


def _grouped_mm(wq: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    # [G, O, K] x [N, G, K, P] -> [N, G, O, P] as one batched integer matmul.
    return torch.matmul(wq.unsqueeze(0), cols)


def conv1d_accumulate(
    qx: torch.Tensor,
    x_zero_point: int,
    weight: QuantizedWeight,
    stride: int,
    padding: int,
    dilation: int,
    groups: int,
) -> torch.Tensor:
    """Conv1d as a conv2d with a unit height."""
    w2 = QuantizedWeight(weight.codes.unsqueeze(2), weight.bits, weight.scale, weight.zero_point)
    acc = conv2d_accumulate(
        qx.unsqueeze(2), x_zero_point, w2, (1, stride), (0, padding), (1, dilation), groups
    )
    return acc.squeeze(2)


def apply_epilogue(
    acc: torch.Tensor,
    x_scale: float,
    weight: QuantizedWeight,
    bias: torch.Tensor | None,
    activation: str | None,
    channel_dim: int,
    out_dtype: torch.dtype = torch.float32,
    out_scale: float = 1.0,
    out_zero_point: int = 0,
) -> torch.Tensor:
    """Dequantize (``acc * x_scale * w_scale[n]``), add bias, apply the activation.

    8-bit ``out_dtype`` (uint8 / int8) requantizes the result with ``out_scale`` and
    ``out_zero_point``; float dtypes return the dequantized values.
    """
    epi = Epilogue(activation, out_dtype, out_scale, out_zero_point)
    shape = [1] * acc.dim()
    shape[channel_dim] = -1
    mult = (weight.per_channel_scale().to(acc.device) * float(x_scale)).reshape(shape)
    y = acc.to(torch.float32) * mult
    if bias is not None:
        y = y + bias.to(torch.float32).reshape(shape)
    y = apply_activation(y, activation)
    return requantize(y, epi) if epi.requantize else y.to(out_dtype)
