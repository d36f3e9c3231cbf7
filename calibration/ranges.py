"""Range methods: turn collected statistics (or a weight tensor) into a clipping range.

Each activation method maps a :class:`StreamingHistogram` plus the quantization spec to
``(lo, hi)``; each weight method maps a weight tensor to per-channel or per-tensor
``(lo, hi)``. Methods are looked up by the names used in :mod:`quantune.config`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from quantune.calibration.histogram import StreamingHistogram
from quantune.config import ActQuant, WeightQuant
from quantune.errors import UserInputError

ActRangeFn = Callable[[StreamingHistogram, ActQuant], tuple[float, float]]
WeightRangeFn = Callable[[torch.Tensor, WeightQuant], tuple[torch.Tensor, torch.Tensor]]


def act_minmax(h: StreamingHistogram, spec: ActQuant) -> tuple[float, float]:
    return h.min, h.max


def act_percentile(h: StreamingHistogram, spec: ActQuant) -> tuple[float, float]:
    p = float(spec.percentile) / 100.0
    if spec.symmetric:
        # One-sided on |x| would need a second histogram; clip both tails at p instead
        # and let the symmetric grid take the larger magnitude.
        return h.quantile(1.0 - p), h.quantile(p)
    lo = h.quantile(1.0 - p) if h.min < 0 else h.min
    return lo, h.quantile(p)


ACT_RANGE_METHODS: dict[str, ActRangeFn] = {
    "minmax": act_minmax,
    "percentile": act_percentile,
}


def _rows(w: torch.Tensor, spec: WeightQuant) -> torch.Tensor:
    w = w.detach().float()
    return w.reshape(w.shape[0], -1) if spec.granularity == "per_channel" else w.reshape(1, -1)


def _shape(lo: torch.Tensor, hi: torch.Tensor, spec: WeightQuant) -> tuple[torch.Tensor, torch.Tensor]:
    if spec.granularity == "per_tensor":
        return lo.reshape(()), hi.reshape(())
    return lo, hi


def weight_minmax(w: torch.Tensor, spec: WeightQuant) -> tuple[torch.Tensor, torch.Tensor]:
    rows = _rows(w, spec)
    return _shape(rows.amin(1), rows.amax(1), spec)


def weight_percentile(w: torch.Tensor, spec: WeightQuant) -> tuple[torch.Tensor, torch.Tensor]:
    rows = _rows(w, spec)
    p = float(spec.percentile) / 100.0
    return _shape(torch.quantile(rows, 1.0 - p, dim=1), torch.quantile(rows, p, dim=1), spec)


WEIGHT_RANGE_METHODS: dict[str, WeightRangeFn] = {
    "minmax": weight_minmax,
    "percentile": weight_percentile,
}


def activation_range(h: StreamingHistogram, spec: ActQuant) -> tuple[float, float]:
    """The calibrated ``(lo, hi)`` of an activation, after ``spec.clip_ratio``."""
    fn = ACT_RANGE_METHODS.get(spec.method)
    if fn is None:
        raise UserInputError(
            f"Activation range method {spec.method!r} is not available; "
            f"use one of {sorted(ACT_RANGE_METHODS)}."
        )
    lo, hi = fn(h, spec)
    return lo * spec.clip_ratio, hi * spec.clip_ratio


def weight_range(w: torch.Tensor, spec: WeightQuant) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (``[Cout]``) or per-tensor (0-dim) ``(lo, hi)`` of a weight tensor."""
    fn = WEIGHT_RANGE_METHODS.get(spec.method)
    if fn is None:
        raise UserInputError(
            f"Weight range method {spec.method!r} is not available; "
            f"use one of {sorted(WEIGHT_RANGE_METHODS)}."
        )
    return fn(w, spec)
