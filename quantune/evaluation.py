"""Evaluate a (quantized) model on evaluation batches with a named metric or a user callable.

Metrics are "higher is better" except ``mse``. ``top1``, ``top5`` and ``fidelity``
(top-1 agreement with the float model) are percentages, so drops read in points;
``cosine`` is the mean cosine similarity in [-1, 1]; ``mse`` the mean squared error. Fidelity metrics compare with the float
model's outputs on the same inputs, computed once and cached, so they need no labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from quantune import metrics
from quantune.batches import batch_labels, run_model
from quantune.errors import UserInputError

METRICS = ("top1", "top5", "fidelity", "cosine", "mse")
# Metrics that need labels in the evaluation batches.
LABELLED = ("top1", "top5")
PERCENT = ("top1", "top5", "fidelity")


def output_tensor(out: Any) -> torch.Tensor:
    """The main tensor of a model output (tensor, tuple, dict or HF ``ModelOutput``)."""
    if torch.is_tensor(out):
        return out
    if isinstance(out, dict) or hasattr(out, "keys"):
        for key in ("logits", "sentence_embedding", "pooler_output", "last_hidden_state"):
            if key in out and torch.is_tensor(out[key]):
                return out[key]
        for v in out.values():
            if torch.is_tensor(v):
                return v
    if isinstance(out, tuple | list) and out and torch.is_tensor(out[0]):
        return out[0]
    raise UserInputError(f"Cannot find a tensor in the model output of type {type(out).__name__}.")


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).float() if t.dim() > 1 else t.float().reshape(-1, 1)


@dataclass
class Evaluator:
    """Computes one metric of a model over a fixed list of evaluation batches.

    Args:
        batches: evaluation batches (labels needed for ``top1`` / ``top5``).
        metric: one of ``METRICS``.
        reference: the float model, for fidelity metrics.
        eval_fn: a user callable ``eval_fn(model) -> float`` replacing the metric.
    """

    batches: Sequence[Any]
    metric: str = "top1"
    reference: nn.Module | None = None
    eval_fn: Callable[[nn.Module], float] | None = None

    def __post_init__(self) -> None:
        if self.eval_fn is None:
            if self.metric not in METRICS:
                raise UserInputError(f"Unknown metric {self.metric!r}; choose one of {', '.join(METRICS)}.")
            if not self.batches:
                raise UserInputError("The evaluation data is empty: give at least one batch.")
            if self.metric in LABELLED and batch_labels(self.batches[0]) is None:
                raise UserInputError(
                    f"Metric {self.metric!r} needs labels: give (inputs, labels) batches, "
                    "or use --metric fidelity to compare with the float model instead."
                )
            if self.metric not in LABELLED and self.reference is None:
                raise UserInputError(f"Metric {self.metric!r} needs the float reference model.")
        self._ref_outputs: list[torch.Tensor] | None = None

    @property
    def name(self) -> str:
        return "eval_fn" if self.eval_fn is not None else self.metric

    @property
    def higher_is_better(self) -> bool:
        return self.eval_fn is not None or self.metric != "mse"

    def _reference_outputs(self) -> list[torch.Tensor]:
        if self._ref_outputs is None:
            with torch.no_grad():
                self._ref_outputs = [_flat(output_tensor(run_model(self.reference, b))) for b in self.batches]  # type: ignore[arg-type]
        return self._ref_outputs

    @torch.no_grad()
    def __call__(self, model: nn.Module, fraction: float = 1.0) -> float:
        """The metric on the first ``fraction`` of the batches (at least one)."""
        if self.eval_fn is not None:
            return float(self.eval_fn(model))
        n = max(1, round(len(self.batches) * fraction))
        out = torch.cat([_flat(output_tensor(run_model(model, b))) for b in self.batches[:n]])
        scale = 100.0 if self.metric in PERCENT else 1.0
        if self.metric in LABELLED:
            labels = torch.cat([batch_labels(b) for b in self.batches[:n]])  # type: ignore[misc]
            if self.metric == "top1":
                return scale * metrics.top1_accuracy(out, labels)
            k = min(5, out.shape[1])
            return scale * float((out.topk(k, dim=1).indices == labels.reshape(-1, 1)).any(dim=1).float().mean())
        ref = torch.cat(self._reference_outputs()[:n])
        if self.metric == "fidelity":
            return scale * metrics.topk_agreement(ref, out, k=1)
        if self.metric == "cosine":
            return metrics.mean_cosine_similarity(ref, out)
        return float(((out.double() - ref.double()) ** 2).mean())
