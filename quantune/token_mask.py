"""Padding tokens are not data: calibration sees only the real tokens of a text batch.

Text batches are padded to a common length, and a transformer still computes hidden
states at the padded positions, which no output uses (attention masks them as keys,
pooling skips them). On MiniLM-L6's calibration sentences 68 % of the positions are
padding: left in, they would dominate activation ranges, GPTQ's Hessians, bias
corrections and the rows AdaRound / AdaQuant fit.

:func:`quantune.batches.run_model` makes a batch's ``attention_mask`` the *active mask*
while the model runs; a hook on a Linear layer whose tensor ``[batch, tokens, features]``
is aligned with it keeps only the real tokens' rows (:func:`real_tokens`). Convolutions'
tensors and tensors of any other shape (pooled outputs, a batch without a mask) pass
through unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

#: Batch key of the mask (Hugging Face's name): 1 for a real token, 0 for padding.
MASK_KEY = "attention_mask"

_ACTIVE: ContextVar[torch.Tensor | None] = ContextVar("quantune_active_token_mask", default=None)


@contextmanager
def active_token_mask(inputs: Any) -> Iterator[None]:
    """Make ``inputs``' ``attention_mask`` the active one for the duration.

    Only the tensor is recorded here (``run_model`` is on the inference hot path); it is
    read when a calibration hook asks (:func:`real_tokens`).
    """
    raw = inputs.get(MASK_KEY) if isinstance(inputs, Mapping) else None
    token = _ACTIVE.set(raw if torch.is_tensor(raw) else None)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def _aligned(x: torch.Tensor, kind: str) -> torch.Tensor | None:
    """The active mask as bool, if it applies to ``x`` and pads anything; else None."""
    raw = _ACTIVE.get()
    if raw is None or kind != "linear" or x.dim() < 3 or raw.dim() != 2 or tuple(x.shape[:2]) != tuple(raw.shape):
        return None
    mask = raw != 0
    return None if bool(mask.all()) else mask.to(x.device)


def real_tokens(x: torch.Tensor, kind: str) -> torch.Tensor:
    """A ``kind`` layer's (``linear``, ``conv2d``, ...) input or output ``x``: for a Linear
    ``[batch, tokens, ...]`` aligned with the active mask, the real tokens' rows
    ``[real tokens, ...]``; otherwise ``x`` itself."""
    mask = _aligned(x, kind)
    return x if mask is None else x[mask]


def real_token_samples(x: torch.Tensor, kind: str) -> torch.Tensor | None:
    """For each row :func:`real_tokens` keeps, the index of its sample in the batch
    (None when nothing is dropped)."""
    mask = _aligned(x, kind)
    return None if mask is None else torch.nonzero(mask)[:, 0]


__all__ = ["MASK_KEY", "active_token_mask", "real_token_samples", "real_tokens"]
