"""Marks that say a tensor already went through an activation, so the activation module
after it can skip it.

A quantized layer whose integer epilogue applied an activation (ReLU / ReLU6 / clamp /
GELU) marks its output with the activation's name and the tensor's version counter; the
activation module after it (see :mod:`quantune.activation_fusion`) returns such an input
unchanged and consumes the mark. The version counter makes the mark die with the first
in-place write; consuming it means a second activation module on the same tensor
computes again. Both matter for GELU, which, unlike a clamp, is not idempotent.

Tensors made under ``torch.inference_mode`` have no version counter: their mark only
lets a *dedicated* activation skip (one called once per forward pass, on this layer's
output, as observed when the fusion was decided): the fusion's own assumption.
"""

from __future__ import annotations

import torch

_MARK = "_quantune_activated"
_CODES = "_quantune_zero_point"


def mark_activated(y: torch.Tensor, activation: str) -> torch.Tensor:
    """Record on ``y`` that ``activation`` was applied to it, as of its current version."""
    setattr(y, _MARK, (activation, None if y.is_inference() else y._version))
    return y


def take_activation_mark(x: torch.Tensor, activation: str, dedicated: bool = False) -> bool:
    """Whether ``x`` carries a live mark for exactly ``activation``; a live mark is consumed.

    Live: not written in place since it was marked (for inference tensors, which cannot
    tell, only when the caller is ``dedicated``).
    """
    mark = getattr(x, _MARK, None)
    if mark is None or mark[0] != activation:
        return False
    live = dedicated if mark[1] is None else mark[1] == x._version
    if live:
        delattr(x, _MARK)
    return live


def mark_codes(q: torch.Tensor, zero_point: int) -> torch.Tensor:
    """Record that uint8 ``q`` holds activation codes whose real zero is ``zero_point``
    (a chained layer's output: padding it must insert this code, not 0)."""
    setattr(q, _CODES, int(zero_point))
    return q


def code_zero_point(x: torch.Tensor) -> int | None:
    """The zero point of chained activation codes, None for anything else."""
    return getattr(x, _CODES, None) if x.dtype == torch.uint8 else None
