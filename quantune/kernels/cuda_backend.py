"""The CUDA backend: the Triton int8 GEMM (:mod:`quantune.kernels.triton_gemm`).

Registered only when CUDA is available and Triton imports. Linear runs the kernel
directly; conv2d / conv1d (groups=1) are lowered to the same GEMM with an im2col over
the int8 codes, padded with the activation zero point so padding adds exactly zero.
The kernel fuses ReLU / ReLU6 / clamp; a GELU epilogue runs after it in torch.

The kernel takes signed int8 activation codes: int8 codes go in as they are, uint8 codes
are flipped once (``x ^ 128``, zero point - 128). quantune's activation quantizer emits
uint8 today, so a quantized model on CUDA pays that elementwise flip per layer input.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from quantune.kernels.dispatch import Backend, register_backend
from quantune.kernels.epilogue import (
    GELU_FORMS,
    Epilogue,
    apply_activation,
    clamp_bounds,
    requantize,
)
from quantune.kernels.onednn_pack import can_pack, centred_codes
from quantune.kernels.packing import pack_codes, storage_bits
from quantune.kernels.weights import QuantizedWeight

NAME = "triton"


def _prepared(weight: QuantizedWeight, device: torch.device) -> dict:
    """Device copies of the weight (int8, or int4 packed), its row sums and scales."""
    key = ("triton", str(device))
    cached = weight.backend_cache.get(key)
    if cached is not None:
        return cached
    codes = centred_codes(weight)
    if codes is None:
        raise ValueError("8-bit asymmetric weights do not fit int8 after centring")
    codes = codes.reshape(weight.out_channels, -1).cpu()
    packed4 = storage_bits(weight.bits) == 4 and weight.max_abs_code() <= 7
    # Packed nibbles are read as int8 bytes so the kernel's arithmetic shifts sign-extend.
    w = pack_codes(codes, 4).view(torch.int8) if packed4 else codes.contiguous()
    prep = {
        "w": w.to(device),
        "packed4": packed4,
        "k": int(codes.shape[1]),
        # Row sums of the (centred) codes: the activation zero point's correction.
        "wsum": codes.to(torch.int32).sum(dim=1).to(torch.int32).to(device),
        "wscale": weight.per_channel_scale().float().to(device).contiguous(),
    }
    weight.backend_cache[key] = prep
    return prep


def _signed(qx: torch.Tensor, zx: int) -> tuple[torch.Tensor, int]:
    """int8 codes and zero point: ``u - zu = (u - 128) - (zu - 128)`` for uint8 codes."""
    if qx.dtype == torch.int8:
        return qx, zx
    return torch.bitwise_xor(qx, 128).view(torch.int8), zx - 128


def supports(op: str, qx: torch.Tensor, weight: QuantizedWeight) -> bool:
    """CUDA codes in 8 bits, an int8-centrable weight, Triton present, groups=1 convs."""
    if not qx.is_cuda or qx.dtype not in (torch.uint8, torch.int8) or qx.numel() == 0:
        return False
    if not can_pack(weight):  # cached: the int8-centring check runs once per weight
        return False
    if op != "linear" and weight.codes.shape[1] != qx.shape[1]:
        return False  # grouped convolutions: not lowered on CUDA yet
    return True


def linear(qx, x_scale, x_zero_point, weight, bias, epi: Epilogue, kernel: str = "auto") -> torch.Tensor:
    """Fused integer linear on the Triton kernel (``kernel``: see ``triton_gemm.launch``)."""
    from quantune.kernels import triton_gemm

    if epi.activation in GELU_FORMS:
        # The kernel fuses the clamp family only: GELU runs on its float output.
        y = linear(qx, x_scale, x_zero_point, weight, bias, Epilogue(None, torch.float32), kernel)
        y = apply_activation(y, epi.activation)
        return requantize(y, epi) if epi.requantize else y.to(epi.out_dtype)
    qx, zx = _signed(qx, x_zero_point)
    lead = qx.shape[:-1]
    x2 = qx.reshape(-1, qx.shape[-1]).contiguous()
    prep = _prepared(weight, qx.device)
    n = weight.out_channels
    out = torch.empty((x2.shape[0], n), device=qx.device, dtype=epi.out_dtype)
    kind = triton_gemm.OUT_REQUANT if epi.requantize else triton_gemm.OUT_FLOAT
    b = None if bias is None else bias.detach().float().contiguous()
    triton_gemm.launch(x2, prep["w"], prep["packed4"], prep["k"], prep["wscale"], prep["wsum"], b, out,
                       x_scale, zx, clamp_bounds(epi.activation), kind, epi.out_scale,
                       epi.out_zero_point, epi.out_qrange, kernel)
    return out.reshape(*lead, n)


def conv2d(qx, x_scale, x_zero_point, weight, bias, stride, padding, dilation, groups,
           epi: Epilogue) -> torch.Tensor:
    """Conv2d (groups=1) as im2col + the fused GEMM, NHWC rows -> NCHW view."""
    qx, zx = _signed(qx, x_zero_point)
    n, c, h, w = qx.shape
    cout, _, kh, kw = weight.codes.shape
    # Codes are exact in fp16 (|code| <= 128); pad with the zero point, then unfold.
    xf = F.pad(qx.half(), (padding[1], padding[1], padding[0], padding[0]), value=float(zx))
    cols = F.unfold(xf, (kh, kw), dilation=dilation, stride=stride)  # [N, C*kh*kw, L]
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    rows = cols.transpose(1, 2).reshape(n * oh * ow, -1).to(torch.int8)
    y = linear(rows, x_scale, zx, weight, bias, epi)  # [N*OH*OW, Cout]
    return y.reshape(n, oh, ow, cout).permute(0, 3, 1, 2)


def conv1d(qx, x_scale, x_zero_point, weight, bias, stride, padding, dilation, groups,
           epi: Epilogue) -> torch.Tensor:
    """Conv1d as conv2d over a unit height."""
    w2 = QuantizedWeight(weight.codes.unsqueeze(2), weight.bits, weight.scale, weight.zero_point,
                         weight.backend_cache)
    y = conv2d(qx.unsqueeze(2), x_scale, x_zero_point, w2, bias, (1, stride), (0, padding),
               (1, dilation), groups, epi)
    return y.squeeze(2)


def register() -> None:
    """Register the Triton backend when CUDA is available and Triton imports."""
    if torch.cuda.is_available() and importlib.util.find_spec("triton") is not None:
        from quantune.kernels import triton_gemm

        if triton_gemm.KERNEL_AVAILABLE:
            register_backend(Backend(NAME, priority=20, supports=supports,
                                     ops={"linear": linear, "conv2d": conv2d, "conv1d": conv1d}))
