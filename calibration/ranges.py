"""Range methods: turn collected statistics (or a weight tensor) into a clipping range.

Each activation method maps a :class:`StreamingHistogram` plus the quantization spec to
``(lo, hi)``; each weight method maps the ``[rows, K]`` view of a weight tensor to
per-row ``(lo, hi)``. Methods are looked up by the names used in
:data:`quantune.config.RANGE_METHODS`; the implementations live in
:mod:`quantune.calibration.act_ranges` and :mod:`quantune.calibration.weight_ranges`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from quantune.calibration.act_ranges import (
    act_aciq,
    act_entropy,
    act_minmax,
    act_mse,
    act_percentile,
)
from quantune.calibration.histogram import StreamingHistogram
from quantune.calibration.weight_ranges import (
    weight_aciq,
    weight_entropy,
    weight_minmax,
    weight_mse,
    weight_percentile,
    weight_rows,
)
from quantune.config import ActQuant, WeightQuant
from quantune.errors import UserInputError

ActRangeFn = Callable[[StreamingHistogram, ActQuant], tuple[float, float]]
WeightRangeFn = Callable[[torch.Tensor, WeightQuant], tuple[torch.Tensor, torch.Tensor]]

ACT_RANGE_METHODS: dict[str, ActRangeFn] = {
    "minmax": act_minmax,
    "percentile": act_percentile,
    "entropy": act_entropy,
    "mse": act_mse,
    "aciq": act_aciq,
    "aciq-laplace": act_aciq,
    "aciq-gaussian": act_aciq,
}

WEIGHT_RANGE_METHODS: dict[str, WeightRangeFn] = {
    "minmax": weight_minmax,
    "percentile": weight_percentile,
    "entropy": weight_entropy,
    "mse": weight_mse,
    "aciq": weight_aciq,
    "aciq-laplace": weight_aciq,
    "aciq-gaussian": weight_aciq,
}


def activation_range(h: StreamingHistogram, spec: ActQuant) -> tuple[float, float]:
    """The calibrated ``(lo, hi)`` of an activation, after ``spec.clip_ratio``."""
    fn = ACT_RANGE_METHODS.get(spec.method)
    if fn is None:
        raise UserInputError(
            f"Activation range method {spec.method!r} is not available; "
            f"use one of {sorted(ACT_RANGE_METHODS)}."
        )
    if h.empty:
        raise UserInputError("Cannot calibrate an activation that was never observed.")
    lo, hi = fn(h, spec)
    return float(lo) * spec.clip_ratio, float(hi) * spec.clip_ratio


def weight_range(w: torch.Tensor, spec: WeightQuant) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (``[Cout]``) or per-tensor (0-dim) ``(lo, hi)`` of a weight tensor."""
    fn = WEIGHT_RANGE_METHODS.get(spec.method)
    if fn is None:
        raise UserInputError(
            f"Weight range method {spec.method!r} is not available; "
            f"use one of {sorted(WEIGHT_RANGE_METHODS)}."
        )
    lo, hi = fn(weight_rows(w, spec), spec)
    if spec.granularity == "per_tensor":
        return lo.reshape(()), hi.reshape(())
    return lo, hi
