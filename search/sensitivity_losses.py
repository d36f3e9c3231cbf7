"""The losses a sensitivity measures: task loss with labels, fidelity to FP32 without.

Every loss maps ``(outputs, reference outputs, batch)`` to per-sample losses ``[N]``
(:func:`per_sample_loss_function`; a token-level output averages its tokens) or to their
mean over the batch (:func:`loss_function`), which is differentiable (the Hessian proxy
needs that) and comparable across batches of different sizes. Losses are computed in float64: sensitivities are small
differences of losses, and a confident classifier's softmax saturates to exactly 1 in
float32, which would zero its Hessian.

- ``ce``: cross-entropy against the batch's labels (the task loss).
- ``kl``: KL(softmax(FP32) || softmax(quantized)), for classifiers without labels.
- ``top1-ce``: cross-entropy against the FP32 model's top-1 class, the differentiable
  surrogate of top-1 agreement: unlike ``kl`` it weighs only what can flip the float
  model's decision, not the whole tail of the distribution.
- ``cosine``: ``1 - cos(FP32, quantized)``, for embedding models.
- ``mse``: mean squared error against the FP32 outputs, for anything else.

``auto`` picks ``ce`` when the batches carry labels that fit the outputs, ``cosine``
when the outputs are unit-norm rows (an embedding model), else ``kl``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from quantune.batches import batch_labels
from quantune.errors import UserInputError

LOSSES = ("auto", "ce", "kl", "top1-ce", "cosine", "mse")

LossFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def output_tensor(out: Any) -> torch.Tensor:
    """The tensor a loss is computed on: the output itself, ``.logits``, or the first
    tensor of a tuple (Hugging Face models return such containers)."""
    if torch.is_tensor(out):
        return out
    for attr in ("logits", "last_hidden_state"):
        value = getattr(out, attr, None)
        if torch.is_tensor(value):
            return value
    if isinstance(out, tuple | list) and out and torch.is_tensor(out[0]):
        return out[0]
    raise UserInputError(
        f"sensitivity needs the model to return a tensor (or .logits), got {type(out).__name__}; "
        "wrap the model so that forward() returns logits or embeddings")


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``[N, ..., C]`` -> ``[N * ..., C]`` (token-level outputs count every token)."""
    return x.reshape(-1, x.shape[-1]) if x.dim() > 1 else x.reshape(1, -1)


def _per_sample(rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Row losses ``[R]`` -> per-sample means ``[N]`` (a token-level output has ``N * T`` rows)."""
    n = out.shape[0] if out.dim() > 1 else 1
    return rows.reshape(n, -1).mean(dim=1)


def _ce(out: torch.Tensor, ref: torch.Tensor, batch: Any) -> torch.Tensor:
    labels = batch_labels(batch)
    assert labels is not None  # resolve_loss checked it
    return F.cross_entropy(out.double(), labels.long(), reduction="none")


def _kl(out: torch.Tensor, ref: torch.Tensor, batch: Any) -> torch.Tensor:
    log_p = F.log_softmax(_rows(ref).double(), dim=-1)
    log_q = F.log_softmax(_rows(out).double(), dim=-1)
    return _per_sample((log_p.exp() * (log_p - log_q)).sum(dim=-1), out)


def _top1_ce(out: torch.Tensor, ref: torch.Tensor, batch: Any) -> torch.Tensor:
    return _per_sample(F.cross_entropy(_rows(out).double(), _rows(ref).argmax(dim=-1), reduction="none"), out)


def _cosine(out: torch.Tensor, ref: torch.Tensor, batch: Any) -> torch.Tensor:
    cos = F.cosine_similarity(_rows(out).double(), _rows(ref).double(), dim=-1, eps=1e-12)
    return _per_sample(1.0 - cos, out)


def _mse(out: torch.Tensor, ref: torch.Tensor, batch: Any) -> torch.Tensor:
    return _per_sample(((out.double() - ref.double()) ** 2).reshape(-1), out)


#: Per-sample losses ``[N]``; the loss of a batch is their mean.
_PER_SAMPLE: dict[str, LossFn] = {"ce": _ce, "kl": _kl, "top1-ce": _top1_ce, "cosine": _cosine, "mse": _mse}


def _labels_fit(out: torch.Tensor, batch: Any) -> bool:
    labels = batch_labels(batch)
    return (labels is not None and out.dim() == 2 and labels.dim() == 1
            and labels.shape[0] == out.shape[0] and not labels.is_floating_point())


def resolve_loss(name: str, out: torch.Tensor, batch: Any) -> str:
    """The concrete loss for ``name`` given one float output and its batch.

    Raises:
        UserInputError: Unknown name, or ``ce`` without usable labels.
    """
    if name not in LOSSES:
        raise UserInputError(f"unknown sensitivity loss {name!r}; use one of {LOSSES}")
    if name == "ce" and not _labels_fit(out, batch):
        raise UserInputError(
            "loss 'ce' needs (inputs, labels) batches with integer labels [N] and logits "
            "[N, C]; use loss='kl' (fidelity to the float model) instead")
    if name != "auto":
        return name
    if _labels_fit(out, batch):
        return "ce"
    rows = _rows(out.detach().float())
    if rows.shape[-1] > 1 and torch.allclose(rows.norm(dim=-1), torch.ones(1), atol=1e-3):
        return "cosine"
    return "kl" if rows.shape[-1] > 1 else "mse"


def _batch_mean(per_sample: LossFn, out: torch.Tensor, ref: torch.Tensor, batch: Any) -> torch.Tensor:
    return per_sample(out, ref, batch).mean()


def loss_function(name: str) -> LossFn:
    """The batch-mean loss of a concrete loss name (not ``auto``): a scalar tensor."""
    return functools.partial(_batch_mean, _PER_SAMPLE[name])


def per_sample_loss_function(name: str) -> LossFn:
    """The per-sample losses ``[N]`` of a concrete loss name: what paired comparisons of
    two models on the same samples need (see :mod:`quantune.search.allocation_refine`)."""
    return _PER_SAMPLE[name]
