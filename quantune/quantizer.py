"""Uniform affine quantizer primitives.

``q = clamp(round(x / scale) + zero_point, qmin, qmax)`` and
``x_hat = (q - zero_point) * scale``. Rounding is round-half-to-even (``torch.round``)
everywhere, so the simulated (fake-quant) and the integer execution paths produce the
same integers. Scales are float32 tensors (per tensor: 0-dim; per channel: 1-dim along
``axis``); zero points are int32 tensors of the same shape.
"""

from __future__ import annotations

import torch

# Smallest scale we allow: a constant tensor (range 0) still gets a valid grid.
_MIN_SCALE = 1e-8


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """Integer range of a ``bits``-wide grid: [-2^(b-1), 2^(b-1)-1] or [0, 2^b-1]."""
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def symmetric_qrange(bits: int) -> tuple[int, int]:
    """Restricted signed range [-(2^(b-1)-1), 2^(b-1)-1] used for symmetric weights.

    Dropping the most negative code keeps the grid symmetric, so -w and w quantize to
    opposite integers (as TensorRT, ONNX Runtime and fbgemm do for weights).
    """
    hi = (1 << (bits - 1)) - 1
    return -hi, hi


def qparams_from_range(
    lo: torch.Tensor,
    hi: torch.Tensor,
    qmin: int,
    qmax: int,
    symmetric: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point that map the float range [lo, hi] onto [qmin, qmax].

    The range is first widened to include 0 so that zero (padding, ReLU outputs) is
    represented exactly. Symmetric grids have zero point ``(qmin + qmax + 1) // 2``
    (0 for signed, the midpoint for unsigned) and use ``max(|lo|, |hi|)``.
    """
    lo = torch.minimum(torch.as_tensor(lo, dtype=torch.float32), torch.zeros(()))
    hi = torch.maximum(torch.as_tensor(hi, dtype=torch.float32), torch.zeros(()))
    if symmetric:
        amax = torch.maximum(-lo, hi)
        zp_value = (qmin + qmax + 1) // 2
        half_steps = (qmax - qmin) / 2.0
        scale = torch.clamp(amax / half_steps, min=_MIN_SCALE)
        zero_point = torch.full_like(scale, zp_value, dtype=torch.int32)
    else:
        scale = torch.clamp((hi - lo) / float(qmax - qmin), min=_MIN_SCALE)
        zero_point = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax).to(torch.int32)
    return scale.to(torch.float32), zero_point


def _broadcast(t: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    if axis is None or t.dim() == 0:
        return t
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    axis: int | None = None,
) -> torch.Tensor:
    """Float -> integer codes (returned as int32)."""
    s = _broadcast(scale, x, axis)
    z = _broadcast(zero_point, x, axis)
    q = torch.round(x.float() / s) + z
    return torch.clamp(q, qmin, qmax).to(torch.int32)


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    axis: int | None = None,
) -> torch.Tensor:
    """Integer codes -> float32."""
    s = _broadcast(scale, q, axis)
    z = _broadcast(zero_point, q, axis)
    return (q.to(torch.int32) - z).to(torch.float32) * s


class _RoundSTE(torch.autograd.Function):
    """round() in the forward pass, identity gradient in the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Straight-through rounding: differentiable stand-in for ``torch.round``."""
    return _RoundSTE.apply(x)


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    axis: int | None = None,
) -> torch.Tensor:
    """Quantize-dequantize in float, differentiable w.r.t. ``x`` and ``scale``.

    Gradients: straight-through for the rounding; zero outside the clamp range for
    ``x`` (values saturate); ``scale`` receives the LSQ-style gradient through the
    division and the final multiplication, which AdaQuant uses to learn step sizes.
    The forward value equals ``dequantize(quantize(x))`` exactly.
    """
    s = _broadcast(scale, x, axis)
    z = _broadcast(zero_point, x, axis).to(x.dtype)
    if torch.is_grad_enabled() and (x.requires_grad or s.requires_grad or z.requires_grad):
        q = torch.clamp(round_ste(x / s) + z, qmin, qmax)
        return (q - z) * s
    # Without autograd the same steps run in place on one buffer: the chain above holds two
    # activation-sized temporaries at a time and allocates six (simulated quantized forward
    # passes during calibration were dominated by them, and the churn fragments the heap).
    q = x / s
    return q.round_().add_(z).clamp_(qmin, qmax).sub_(z).mul_(s)
