"""Evaluators: run a model over fixed evaluation batches and turn its outputs into metrics.

An evaluator is built once per entry. Fidelity evaluators compare against the float
model's outputs on the same batches, computed once on first use and cached, so scoring
ten quantized variants runs the float model once.

Any callable that accepts a batch's inputs can be scored (an ``nn.Module``, a
``QuantizedModel``, a wrapper around an ONNX Runtime session), because batches are fed
with :func:`quantune.batches.run_model`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch

from quantune import metrics
from quantune.batches import batch_labels, run_model
from quantune.errors import UserInputError


def collect_outputs(model: Callable[..., Any], batches: Sequence[Any]) -> torch.Tensor:
    """Concatenated float outputs of ``model`` over ``batches`` (no autograd)."""
    outs: list[torch.Tensor] = []
    with torch.inference_mode():
        for batch in batches:
            y = run_model(model, batch)  # type: ignore[arg-type]
            if not torch.is_tensor(y):
                raise UserInputError(
                    f"The evaluated model must return a tensor, got {type(y).__name__}; wrap "
                    "it so that forward() returns logits or embeddings."
                )
            outs.append(y.detach().float().cpu())
    if not outs:
        raise UserInputError("No evaluation batches: build the entry with n_eval >= 1.")
    return torch.cat(outs)


class Evaluator(ABC):
    """Scores a model on fixed evaluation batches.

    Attributes:
        metric_names: names of the metrics :meth:`score` returns, in display order.
        primary_metric: the one metric tables and plots use.
        higher_is_better: direction of ``primary_metric``.
    """

    metric_names: tuple[str, ...] = ()
    primary_metric: str = ""
    higher_is_better: bool = True

    def __init__(self, eval_batches: Sequence[Any]) -> None:
        self.eval_batches = eval_batches

    def outputs(self, model: Callable[..., Any]) -> torch.Tensor:
        """Outputs of ``model`` over the evaluation batches."""
        return collect_outputs(model, self.eval_batches)

    @abstractmethod
    def score(self, outputs: torch.Tensor) -> dict[str, float]:
        """Metrics from outputs over the evaluation batches (in batch order)."""

    def outputs_of(self, model: Callable[..., Any]) -> torch.Tensor:
        """The outputs to score ``model`` by (subclasses may reuse cached ones)."""
        return self.outputs(model)

    def __call__(self, model: Callable[..., Any]) -> dict[str, float]:
        return self.score(self.outputs_of(model))

    def per_sample(self, outputs: torch.Tensor) -> torch.Tensor:
        """The primary metric per evaluation sample (``[N]``, its mean is the metric), for
        paired comparisons of two models on the same inputs."""
        raise NotImplementedError(f"{type(self).__name__} has no per-sample form of {self.primary_metric!r}")

    def evaluate(self, model: Callable[..., Any]) -> tuple[dict[str, float], torch.Tensor]:
        """``(metrics, per-sample primary metric as float64)`` from one pass over the batches."""
        outputs = self.outputs_of(model)
        return self.score(outputs), self.per_sample(outputs).double()


class FidelityEvaluator(Evaluator):
    """Compares a model's outputs with the float reference model's on the same inputs."""

    def __init__(self, eval_batches: Sequence[Any], reference_model: Callable[..., Any]) -> None:
        super().__init__(eval_batches)
        self._reference_model = reference_model
        self._reference: torch.Tensor | None = None

    def outputs_of(self, model: Callable[..., Any]) -> torch.Tensor:
        # The reference model scored against itself: reuse its cached outputs rather
        # than running it twice (CPU inference is deterministic for equal inputs).
        if model is self._reference_model:
            return self.reference
        return self.outputs(model)

    @property
    def reference(self) -> torch.Tensor:
        """The float model's outputs (computed on first use)."""
        if self._reference is None:
            self._reference = self.outputs(self._reference_model)
        return self._reference


class ClassifierFidelity(FidelityEvaluator):
    """Top-1 / top-5 agreement with the float model and mean KL of the softmaxes."""

    metric_names = ("top1_agreement", "top5_agreement", "mean_kl")
    primary_metric = "top1_agreement"

    def score(self, outputs: torch.Tensor) -> dict[str, float]:
        ref = self.reference
        return {
            "top1_agreement": metrics.topk_agreement(ref, outputs, 1),
            "top5_agreement": metrics.topk_agreement(ref, outputs, 5),
            "mean_kl": metrics.mean_kl_divergence(ref, outputs),
        }

    def per_sample(self, outputs: torch.Tensor) -> torch.Tensor:
        return metrics.topk_hits(self.reference, outputs, 1)


class EmbeddingFidelity(FidelityEvaluator):
    """Mean cosine with the float embeddings and top-k retrieval neighbour overlap."""

    primary_metric = "mean_cosine"

    def __init__(self, eval_batches: Sequence[Any], reference_model: Callable[..., Any], k: int = 10) -> None:
        super().__init__(eval_batches, reference_model)
        self.k = k
        self.metric_names = ("mean_cosine", f"top{k}_overlap")

    def score(self, outputs: torch.Tensor) -> dict[str, float]:
        ref = self.reference
        return {
            "mean_cosine": metrics.mean_cosine_similarity(ref, outputs),
            f"top{self.k}_overlap": metrics.neighbour_overlap(ref, outputs, self.k),
        }

    def per_sample(self, outputs: torch.Tensor) -> torch.Tensor:
        return metrics.cosine_similarities(self.reference, outputs)


class LabelledAccuracy(FidelityEvaluator):
    """Top-1 accuracy on labelled ``(inputs, labels)`` batches, plus agreement with FP32."""

    metric_names = ("top1_accuracy", "top1_agreement")
    primary_metric = "top1_accuracy"

    def __init__(self, eval_batches: Sequence[Any], reference_model: Callable[..., Any]) -> None:
        super().__init__(eval_batches, reference_model)
        labels = [batch_labels(b) for b in eval_batches]
        if not labels or any(lab is None for lab in labels):
            raise UserInputError("LabelledAccuracy needs (inputs, labels) evaluation batches.")
        self.labels = torch.cat([lab for lab in labels if lab is not None]).long().cpu()

    def score(self, outputs: torch.Tensor) -> dict[str, float]:
        return {
            "top1_accuracy": metrics.top1_accuracy(outputs, self.labels),
            "top1_agreement": metrics.topk_agreement(self.reference, outputs, 1),
        }

    def per_sample(self, outputs: torch.Tensor) -> torch.Tensor:
        return metrics.top1_correct(outputs, self.labels)
