"""The CPU backend: oneDNN int8 primitives with fused post-ops.

Chosen by measurement among what torch offers on x86 (``benchmarks/gemm.py`` keeps the
comparison): ``onednn::qlinear_pointwise`` / ``qconv2d_pointwise`` run u8 x s8 -> s32
with the whole epilogue fused (activation zero point via oneDNN's precomputed weight
compensation, per-channel dequantize, bias, ReLU / hardtanh clamp / GELU, fp32 or requantized
8-bit output). ``torch._int_mm`` (s8 x s8) measured 4-20x *slower* than fp32 on an
AVX2 machine and is not used; fbgemm's ``quantized::linear`` matches oneDNN but needs
quantized-tensor wrappers per call.

Activations must be unsigned for the fast path: signed (int8) codes are shifted to
uint8 with their zero point (``q + 128``, ``zx + 128``), which leaves ``q - zx`` and
hence the accumulator unchanged.
"""

from __future__ import annotations

import torch

from quantune.kernels import cpu_caps
from quantune.kernels.dispatch import Backend, register_backend
from quantune.kernels.epilogue import (
    GELU_FORMS,
    Epilogue,
    apply_activation,
    clamp_bounds,
    requantize,
)
from quantune.kernels.onednn_pack import can_pack, conv_pack, linear_pack
from quantune.kernels.weights import QuantizedWeight

NAME = "onednn"


def _post_op(activation: str | None) -> tuple[str, list, str]:
    """oneDNN post-op (name, scalars, algorithm) of an epilogue activation."""
    approximate = GELU_FORMS.get(activation or "")
    if approximate is not None:
        return "gelu", [], approximate
    bounds = clamp_bounds(activation)
    if bounds is None:
        return "none", [], ""
    lo, hi = bounds
    if lo == 0.0 and hi == float("inf"):
        return "relu", [], ""
    return "hardtanh", [lo, hi], ""


def _unsigned(qx: torch.Tensor, x_zero_point: int) -> tuple[torch.Tensor, int]:
    if qx.dtype == torch.uint8:
        return qx, x_zero_point
    # int8 -> uint8 by flipping the sign bit: the same as adding 128 modulo 256.
    return torch.bitwise_xor(qx.view(torch.uint8), 128), x_zero_point + 128


def _out_args(epi: Epilogue) -> tuple[float, int, torch.dtype]:
    """oneDNN output (scale, zero point, dtype); bf16 is converted after (see below)."""
    if epi.requantize:
        return epi.out_scale, epi.out_zero_point, epi.out_dtype
    # oneDNN's bf16 output has no fast path on CPUs without AVX512-BF16 (measured
    # ~100x slower than fp32 output on AVX2): write fp32 and convert.
    return 1.0, 0, torch.float32


def _finish(y: torch.Tensor, epi: Epilogue) -> torch.Tensor:
    return y.to(epi.out_dtype) if y.dtype != epi.out_dtype else y


def _split_finish(y: torch.Tensor, epi: Epilogue, activation_left: bool) -> torch.Tensor:
    """Finish the split path: an activation oneDNN could not fuse, then the output dtype."""
    if activation_left:
        y = apply_activation(y, epi.activation, inplace=True)
    return requantize(y, epi) if epi.requantize else _finish(y, epi)


def supports(op: str, qx: torch.Tensor, weight: QuantizedWeight) -> bool:
    """CPU, integer codes in 8 bits, a oneDNN-packable weight and the op present."""
    if qx.device.type != "cpu" or qx.dtype not in (torch.uint8, torch.int8) or qx.numel() == 0:
        return False
    if weight.codes.device.type != "cpu" or not can_pack(weight):
        return False
    if op == "linear":
        return cpu_caps.has_onednn_linear()
    return cpu_caps.has_onednn_conv()


def linear(qx, x_scale, x_zero_point, weight, bias, epi: Epilogue) -> torch.Tensor:
    """Fused integer linear on oneDNN (signature of the dispatch backend ops)."""
    qx, zx = _unsigned(qx, x_zero_point)
    qx = qx.contiguous()
    pack = linear_pack(weight)
    name, args, algorithm = _post_op(epi.activation)
    out_scale, out_zp, out_dtype = _out_args(epi)
    if pack.extra is None:
        y = torch.ops.onednn.qlinear_pointwise(
            qx, x_scale, zx, pack.main, pack.w_scale, pack.w_zero_point, bias,
            out_scale, out_zp, out_dtype, name, args, algorithm,
        )
        return _finish(y, epi)
    # Saturating CPU, split weight: extra part first (fp32, no bias), then the main
    # GEMM adds it in its binary post-op before bias is final and the activation runs.
    y_extra = torch.ops.onednn.qlinear_pointwise(
        qx, x_scale, zx, pack.extra, pack.w_scale, pack.w_zero_point, None,
        1.0, 0, torch.float32, "none", [], "",
    )
    fused = name if name in ("none", "relu") else "none"  # binary + hardtanh / gelu: unsupported
    y = torch.ops.onednn.qlinear_pointwise.binary(
        qx, x_scale, zx, pack.main, pack.w_scale, pack.w_zero_point, y_extra, bias,
        1.0, 0, torch.float32, 1.0, 0, "add", 1.0, fused, [], "",
    )
    return _split_finish(y, epi, fused != name)


def conv2d(qx, x_scale, x_zero_point, weight, bias, stride, padding, dilation, groups,
           epi: Epilogue) -> torch.Tensor:
    """Fused integer conv2d on oneDNN; channels-last in, channels-last out."""
    qx, zx = _unsigned(qx, x_zero_point)
    pack = conv_pack(weight, x_scale, zx, stride, padding, dilation, groups)
    name, args, algorithm = _post_op(epi.activation)
    out_scale, out_zp, out_dtype = _out_args(epi)
    geometry = (list(stride), list(padding), list(dilation), groups)
    if pack.extra is None and name != "gelu":
        y = torch.ops.onednn.qconv2d_pointwise(
            qx, x_scale, zx, pack.main, pack.w_scale, pack.w_zero_point, bias, *geometry,
            out_scale, out_zp, out_dtype, name, args, algorithm,
        )
        return _finish(y, epi)
    if pack.extra is None:  # oneDNN's int8 conv has no GELU post-op: float output, GELU after
        y = torch.ops.onednn.qconv2d_pointwise(
            qx, x_scale, zx, pack.main, pack.w_scale, pack.w_zero_point, bias, *geometry,
            1.0, 0, torch.float32, "none", [], "",
        )
        return _split_finish(y, epi, True)
    accum = torch.ops.onednn.qconv2d_pointwise(
        qx, x_scale, zx, pack.extra, pack.w_scale, pack.w_zero_point, None, *geometry,
        1.0, 0, torch.float32, "none", [], "",
    )
    fused = name if name in ("none", "relu") else "none"
    y = torch.ops.onednn.qconv2d_pointwise.binary(
        qx, x_scale, zx, pack.main, pack.w_scale, pack.w_zero_point, accum, bias, *geometry,
        1.0, 0, torch.float32, 1.0, 0, "sum", 1.0, fused, [], "",
    )
    return _split_finish(y, epi, fused != name)


def conv1d(qx, x_scale, x_zero_point, weight, bias, stride, padding, dilation, groups,
           epi: Epilogue) -> torch.Tensor:
    """Conv1d as conv2d over a unit height (the packed weight gets the extra axis)."""
    y = conv2d(qx.unsqueeze(2), x_scale, x_zero_point, weight, bias, (1, stride), (0, padding),
               (1, dilation), groups, epi)
    return y.squeeze(2)


def register() -> None:
    """Register the oneDNN backend when its linear op runs on this machine."""
    if cpu_caps.has_onednn_linear():
        register_backend(
            Backend(NAME, priority=10, supports=supports,
                    ops={"linear": linear, "conv2d": conv2d, "conv1d": conv1d})
        )
