"""How a batch of data is fed to a model, and validation of calibration data.

A batch is one of:
- a tensor: ``model(batch)``;
- a dict of keyword inputs (Hugging Face style): ``model(**batch)``;
- a tuple/list ``(inputs, labels, ...)``: ``inputs`` is fed as above, the rest ignored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any, TypeVar

import torch
from torch import nn

from quantune.errors import UserInputError
from quantune.token_mask import active_token_mask

T = TypeVar("T")


def model_inputs(batch: Any) -> Any:
    """The part of a batch that is fed to the model."""
    if isinstance(batch, tuple | list):
        if not batch:
            raise UserInputError("A calibration batch is an empty tuple/list.")
        return batch[0]
    return batch


def batch_labels(batch: Any) -> torch.Tensor | None:
    """Labels of an ``(inputs, labels)`` batch, else None."""
    if isinstance(batch, tuple | list) and len(batch) >= 2 and torch.is_tensor(batch[1]):
        return batch[1]
    return None


def run_model(model: nn.Module, batch: Any) -> Any:
    """Call ``model`` on a batch following the batch conventions above.

    A keyword batch's ``attention_mask`` is the active token mask meanwhile, so that
    calibration hooks skip padded positions (:mod:`quantune.token_mask`).
    """
    inputs = model_inputs(batch)
    with active_token_mask(inputs):
        if isinstance(inputs, dict):
            return model(**inputs)
        return model(inputs)


def sample_shape(batch: Any) -> tuple[Any, ...]:
    """Per-sample shape of a batch's inputs (of every tensor, for keyword inputs)."""
    inputs = model_inputs(batch)
    if isinstance(inputs, dict):
        return tuple((k, tuple(v.shape[1:])) for k, v in inputs.items() if torch.is_tensor(v))
    return tuple(inputs.shape[1:]) if torch.is_tensor(inputs) else ()


def largest_group(items: Iterable[T], key: Callable[[T], Hashable], weight: Callable[[T], int]) -> list[T]:
    """The items sharing the ``key`` of the largest summed ``weight``, in their order."""
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return max(groups.values(), key=lambda group: sum(weight(i) for i in group), default=[])


def largest_same_shape_batches(batches: list[Any]) -> list[Any]:
    """The batches of the per-sample input shape that holds the most samples (in order):
    what can be stacked into one tensor when images (or sequences) come in several sizes."""
    return largest_group(batches, sample_shape, batch_size)


def batch_size(batch: Any) -> int:
    """Number of samples in a batch (first dimension of its first tensor)."""
    inputs = model_inputs(batch)
    if isinstance(inputs, dict):
        inputs = next((v for v in inputs.values() if torch.is_tensor(v)), None)
    if not torch.is_tensor(inputs):
        raise UserInputError(
            f"A batch must be a tensor, a dict of tensors or an (inputs, labels) pair; "
            f"got {type(inputs).__name__}."
        )
    return int(inputs.shape[0]) if inputs.dim() > 0 else 1


def batch_tensors(batch: Any) -> list[torch.Tensor]:
    """Every tensor of a batch (inputs and labels; nested tuples, lists and dicts)."""
    if torch.is_tensor(batch):
        return [batch]
    if isinstance(batch, dict):
        return [t for v in batch.values() for t in batch_tensors(v)]
    if isinstance(batch, tuple | list):
        return [t for v in batch for t in batch_tensors(v)]
    return []


def _tensors(inputs: Any) -> list[torch.Tensor]:
    if torch.is_tensor(inputs):
        return [inputs]
    if isinstance(inputs, dict):
        return [v for v in inputs.values() if torch.is_tensor(v)]
    return []


def check_finite(batch: Any, index: int) -> None:
    """Raise a clear error if a float input tensor of the batch holds NaN or Inf."""
    for t in _tensors(model_inputs(batch)):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise UserInputError(
                f"Calibration batch {index} contains NaN or Inf values; clean or "
                f"normalize the data before quantizing."
            )


def iter_batches(data: Iterable[Any], max_samples: int | None = None) -> Iterator[Any]:
    """Iterate calibration batches, validated, stopping after ``max_samples`` samples.

    Raises:
        UserInputError: for non-iterable or empty data, NaN/Inf inputs, or bad batch types.
    """
    if torch.is_tensor(data):
        raise UserInputError(
            "Calibration data must be an iterable of batches (a list of tensors, a "
            "DataLoader, ...), not a single tensor: wrap it as [tensor] or split it."
        )
    try:
        iterator = iter(data)
    except TypeError as exc:
        raise UserInputError(
            f"Calibration data must be an iterable of batches, got {type(data).__name__}."
        ) from exc
    seen = 0
    for i, batch in enumerate(iterator):
        n = batch_size(batch)
        check_finite(batch, i)
        if max_samples is not None and seen + n > max_samples:
            remaining = max_samples - seen
            if remaining <= 0:
                return
            batch = _head(batch, remaining)
            n = remaining
        seen += n
        yield batch
        if max_samples is not None and seen >= max_samples:
            return
    if seen == 0:
        raise UserInputError("Calibration data is empty: give at least one batch of inputs.")


def _head(batch: Any, n: int) -> Any:
    if torch.is_tensor(batch):
        return batch[:n]
    if isinstance(batch, dict):
        return {k: (v[:n] if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(_head(b, n) if torch.is_tensor(b) or isinstance(b, dict) else b for b in batch)
    return batch


def describe_expected_input(model: nn.Module) -> str:
    """A human description of the input shape the model's first layer expects."""
    for _, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return f"[N, {m.in_channels}, H, W] float"
        if isinstance(m, nn.Conv1d):
            return f"[N, {m.in_channels}, L] float"
        if isinstance(m, nn.Linear):
            return f"[N, ..., {m.in_features}] float"
        if isinstance(m, nn.Embedding):
            return f"[N, L] integer token ids below {m.num_embeddings}"
    return "the shape your model's forward() takes"


def describe_batch(batch: Any) -> str:
    inputs = model_inputs(batch)
    if torch.is_tensor(inputs):
        return f"{list(inputs.shape)} {str(inputs.dtype).replace('torch.', '')}"
    if isinstance(inputs, dict):
        return "{" + ", ".join(f"{k}: {describe_batch(v)}" for k, v in inputs.items()) + "}"
    return type(inputs).__name__


def run_checked(model: nn.Module, batch: Any, index: int = 0) -> Any:
    """``run_model`` without autograd that turns a shape/dtype failure into an error naming
    the expected input. (With autograd, a model whose parameters require grad kept every
    activation of the pass for a backward that never comes: +550 MB for EfficientNet-Lite0
    at batch 8.)"""
    try:
        with torch.no_grad():
            return run_model(model, batch)
    except (RuntimeError, TypeError, ValueError, IndexError, AssertionError) as exc:
        if isinstance(exc, UserInputError):
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = (" The model is a torch.export program traced with static shapes: export it with "
                "dynamic_shapes (e.g. {0: torch.export.Dim('batch')}) or give batches of the traced "
                "shape." if "Guard failed" in message else "")
        raise UserInputError(
            f"The model failed on calibration batch {index} of shape "
            f"{describe_batch(batch)}: {message}. "
            f"It expects input of shape {describe_expected_input(model)}.{hint}"
        ) from exc


def finite_or_raise(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise UserInputError(f"{what} is not finite ({value}).")
    return value
