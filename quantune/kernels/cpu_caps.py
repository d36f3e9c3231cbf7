"""What the installed torch offers for integer GEMMs on this CPU, probed lazily once.

Every probe runs the op on a tiny problem the first time it is asked for (never at
``import quantune``) and caches the answer, so a torch build that lacks an op, or whose
op fails on this CPU, falls back instead of crashing.

The saturation probe matters on x86 CPUs without VNNI (AVX2 only): there oneDNN's and
fbgemm's u8 x s8 kernels multiply with ``vpmaddubsw``, which adds two byte products
into a *saturating* int16, so ``255*127 + 255*127`` clips to 32767 and the int32
accumulator is wrong. With VNNI (``vpdpbusd``) the products go straight into int32
and the result is exact. We run the worst case once and record what this machine does.
"""

from __future__ import annotations

import functools

import torch

# |w| <= 64 keeps every u8 x s8 pair sum inside int16: 2 * 255 * 64 = 32640 <= 32767.
SATURATION_SAFE_MAX_ABS_CODE = 64


def _onednn_ops_present(*names: str) -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    ns = getattr(torch.ops, "onednn", None)
    if ns is None:
        return False
    for name in names:
        try:
            getattr(ns, name)
        except (AttributeError, RuntimeError):
            return False
    return True


def _run_linear(qx: torch.Tensor, qw: torch.Tensor) -> torch.Tensor:
    n = qw.shape[0]
    packed = torch.ops.onednn.qlinear_prepack(qw, None)
    return torch.ops.onednn.qlinear_pointwise(
        qx, 1.0, 0, packed, torch.ones(n), torch.zeros(n, dtype=torch.int64), None,
        1.0, 0, torch.float32, "none", [], "",
    )


@functools.cache
def has_onednn_linear() -> bool:
    """``onednn::qlinear_prepack`` / ``qlinear_pointwise`` exist and run here."""
    if not _onednn_ops_present("qlinear_prepack", "qlinear_pointwise"):
        return False
    try:
        qx = torch.arange(8, dtype=torch.uint8).reshape(2, 4)
        qw = torch.ones(3, 4, dtype=torch.int8)
        y = _run_linear(qx, qw)
    except RuntimeError:
        return False
    return bool(torch.equal(y, qx.float().sum(1, keepdim=True).expand(2, 3)))


@functools.cache
def has_onednn_conv() -> bool:
    """``onednn::qconv_prepack`` / ``qconv2d_pointwise`` exist and run here."""
    if not _onednn_ops_present("qconv_prepack", "qconv2d_pointwise"):
        return False
    try:
        qx = torch.ones(1, 4, 3, 3, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
        qw = torch.ones(2, 4, 1, 1, dtype=torch.int8)
        ones, zeros = torch.ones(2), torch.zeros(2, dtype=torch.int64)
        packed = torch.ops.onednn.qconv_prepack(qw, ones, 1.0, 0, [1, 1], [0, 0], [1, 1], 1, None)
        y = torch.ops.onednn.qconv2d_pointwise(
            qx, 1.0, 0, packed, ones, zeros, None, [1, 1], [0, 0], [1, 1], 1,
            1.0, 0, torch.float32, "none", [], "",
        )
    except RuntimeError:
        return False
    return bool((y == 4.0).all())


@functools.cache
def u8s8_saturates() -> bool:
    """Whether oneDNN's u8 x s8 GEMM clips pair sums to int16 on this CPU (no VNNI)."""
    if not has_onednn_linear():
        return False
    k = 64
    qx = torch.full((1, k), 255, dtype=torch.uint8)
    qw = torch.full((1, k), 127, dtype=torch.int8)
    return float(_run_linear(qx, qw)[0, 0]) != 255.0 * 127.0 * k


def describe() -> dict[str, object]:
    """The probe results, for benchmark and report headers."""
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_linear": has_onednn_linear(),
        "onednn_conv": has_onednn_conv(),
        "u8s8_saturates": u8s8_saturates(),
    }
