"""What the registry hands out: a float model, its data, and how to score a copy of it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from quantune.zoo.evaluators import Evaluator


@dataclass(frozen=True)
class ZooSize:
    """How much data an entry builds.

    Attributes:
        n_calib: calibration samples (images, sentences, ...).
        n_eval: evaluation samples.
        batch_size: samples per batch, for both calibration and evaluation.
        seed: seeds every random choice (crops, flips, sentence picks), so two builds
            with the same size give identical batches.
    """

    n_calib: int
    n_eval: int
    batch_size: int
    seed: int = 0

    def __post_init__(self) -> None:
        from quantune.errors import UserInputError

        for name in ("n_calib", "n_eval", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserInputError(f"ZooSize.{name} must be a positive integer, got {value!r}.")


@dataclass
class ZooEntry:
    """A real model with disjoint calibration and evaluation data and its evaluator.

    Attributes:
        name: the registry name (``efficientnet-lite0``, ...).
        description: one line for tables and reports.
        model: the float model in eval mode; a plain ``nn.Module`` that takes the
            inputs of one batch (see :mod:`quantune.batches`).
        calib_batches: batches for calibration (never overlapping ``eval_batches``).
        eval_batches: batches the evaluator scores.
        evaluator: maps a model (or any callable with the same inputs) to metrics.
        calib_sources: names of the sources (images, modules) the calibration data
            came from; disjoint from ``eval_sources``.
        eval_sources: names of the sources of the evaluation data.
        size: the sizes the entry was built with.
        input_names: names of the model inputs, in positional order, for export
            (one name for tensor batches, the dict keys for keyword batches).
        info: free-form facts worth reporting (normalization, weights file, ...).
    """

    name: str
    description: str
    model: nn.Module
    calib_batches: list[Any]
    eval_batches: list[Any]
    evaluator: Evaluator
    calib_sources: Sequence[str]
    eval_sources: Sequence[str]
    size: ZooSize
    input_names: tuple[str, ...] = ("input",)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def metric_names(self) -> tuple[str, ...]:
        return self.evaluator.metric_names

    @property
    def primary_metric(self) -> str:
        return self.evaluator.primary_metric

    def evaluate(self, model: Any) -> dict[str, float]:
        """Metrics of ``model`` (a quantized copy, an ONNX session wrapper, ...)."""
        return self.evaluator(model)

    def evaluate_per_sample(self, model: Any) -> tuple[dict[str, float], torch.Tensor]:
        """Metrics of ``model`` and its primary metric per evaluation sample (``[N]``)."""
        return self.evaluator.evaluate(model)
