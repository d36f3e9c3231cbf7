"""Marks that say a tensor is already clamped, so a following activation can skip it.

A quantized layer whose epilogue applied a ReLU / ReLU6 / clamp marks its output with
the bounds and the tensor's version counter; the activation module after it (see
:mod:`quantune.activation_fusion`) returns such an input unchanged. The version
counter makes the mark die with the first in-place write, so a skip is always exact.
"""

from __future__ import annotations

import torch

_MARK = "_quantune_clamped"


def mark_clamped(y: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """Record on ``y`` that it is clamped to ``bounds`` as of its current version."""
    setattr(y, _MARK, (bounds[0], bounds[1], y._version))
    return y


def is_clamped(x: torch.Tensor, bounds: tuple[float, float]) -> bool:
    """``x`` carries a mark for exactly ``bounds`` and was not written in place since."""
    mark = getattr(x, _MARK, None)
    return mark is not None and mark == (bounds[0], bounds[1], x._version)
