"""Whole-model output error on calibration batches: the check a calibration step must pass.

A step that minimizes a local error (one layer's output, one channel's mean) can still
hurt the model: bias correction removes a mean shift that a few clipped outlier tokens
dominate, and on MiniLM-L6 with entropy ranges that moved every other token (cosine
0.907 -> 0.274). Such steps are kept only if the whole model's relative output error,
``sum (y_q - y)^2 / sum y^2`` against the float model on a few calibration batches, does
not grow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from quantune.batches import run_model

#: Calibration batches a whole-model check runs on.
CHECK_BATCHES = 8


def _output(out: Any) -> torch.Tensor:
    from quantune.search.sensitivity_losses import output_tensor

    return output_tensor(out).detach().float()


@torch.no_grad()
def reference_outputs(float_model: Callable[..., Any], batches: Sequence[Any]) -> list[torch.Tensor] | None:
    """The float model's outputs on ``batches``; None when they are not tensors (or
    ``.logits`` / ``.last_hidden_state`` / a tuple's first tensor), which leaves nothing
    to compare: callers then skip their check."""
    from quantune.errors import UserInputError

    try:
        return [_output(run_model(float_model, b)) for b in batches]  # type: ignore[arg-type]
    except UserInputError:
        return None


@torch.no_grad()
def relative_output_error(model: Callable[..., Any], batches: Sequence[Any], reference: Sequence[torch.Tensor]) -> float:
    """``sum (y - y_ref)^2 / sum y_ref^2`` of ``model`` over ``batches``."""
    num = den = 0.0
    for batch, ref in zip(batches, reference, strict=True):
        y = _output(run_model(model, batch))  # type: ignore[arg-type]
        num += float((y - ref).pow(2).sum())
        den += float(ref.pow(2).sum())
    return num / max(den, 1e-30)


def bias_snapshot(layers: dict[str, Any]) -> dict[str, torch.Tensor | None]:
    """Each layer's bias (a copy; None where it has none)."""
    return {n: None if m.bias is None else m.bias.detach().clone() for n, m in layers.items()}


@torch.no_grad()
def restore_biases(layers: dict[str, Any], snapshot: dict[str, torch.Tensor | None]) -> None:
    """Put back the biases of :func:`bias_snapshot`."""
    for name, bias in snapshot.items():
        layer = layers[name]
        if bias is None:
            layer.bias = None
        elif layer.bias is None:  # bias correction gave a bias-less layer one; put it back
            layer.bias = nn.Parameter(bias.clone())
        else:
            layer.bias.data.copy_(bias)


__all__ = ["CHECK_BATCHES", "bias_snapshot", "reference_outputs", "relative_output_error", "restore_biases"]
