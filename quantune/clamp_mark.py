"""Marks that say a tensor is already clamped, so a following activation can skip it.

A quantized layer whose epilogue applied a ReLU / ReLU6 / clamp marks its output with
the bounds and the tensor's version counter; the activation module after it (see
:mod:`quantune.activation_fusion`) returns such an input unchanged. The version
counter makes the mark die with the first in-place write, so a skip is always exact.

Tensors made under ``torch.inference_mode`` have no version counter: their mark only
lets a *dedicated* activation skip (one called once per forward pass, on this layer's
output, as observed when the fusion was decided): the fusion's own assumption.
"""

from __future__ import annotations

import torch

_MARK = "_quantune_clamped"
_CODES = "_quantune_zero_point"


def mark_clamped(y: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """Record on ``y`` that it is clamped to ``bounds`` as of its current version."""
    setattr(y, _MARK, (bounds[0], bounds[1], None if y.is_inference() else y._version))
    return y


def is_clamped(x: torch.Tensor, bounds: tuple[float, float], dedicated: bool = False) -> bool:
    """``x`` carries a mark for exactly ``bounds`` and was not written in place since
    (for inference tensors, which cannot tell: only when the caller is ``dedicated``)."""
    mark = getattr(x, _MARK, None)
    if mark is None or mark[:2] != (bounds[0], bounds[1]):
        return False
    return dedicated if mark[2] is None else mark[2] == x._version


def mark_codes(q: torch.Tensor, zero_point: int) -> torch.Tensor:
    """Record that uint8 ``q`` holds activation codes whose real zero is ``zero_point``
    (a chained layer's output: padding it must insert this code, not 0)."""
    setattr(q, _CODES, int(zero_point))
    return q


def code_zero_point(x: torch.Tensor) -> int | None:
    """The zero point of chained activation codes, None for anything else."""
    return getattr(x, _CODES, None) if x.dtype == torch.uint8 else None
