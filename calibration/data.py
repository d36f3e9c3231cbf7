"""Calibration data handling: a seeded, bounded-memory subset of any iterable of batches.

Validation (empty data, NaN/Inf, bad batch types) lives in :mod:`quantune.batches` and
is applied on the way through; a batch whose shape does not fit the model is reported
by :func:`quantune.batches.run_checked` when the model first runs on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from quantune.batches import batch_size, iter_batches
from quantune.errors import UserInputError


def take_rows(batch: Any, rows: torch.Tensor) -> Any:
    """The samples ``rows`` of a batch (tensor, dict of tensors or ``(inputs, labels)``).

    Tensors are indexed along dim 0 (which copies), so the result never keeps the
    whole source batch alive; 0-dim tensors and non-tensor entries are kept as they are.
    """
    if torch.is_tensor(batch):
        return batch[rows] if batch.dim() > 0 else batch
    if isinstance(batch, dict):
        return {k: take_rows(v, rows) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(take_rows(b, rows) for b in batch)
    return batch


def concat_batches(parts: list[Any]) -> Any:
    """Concatenate batches of the same structure along dim 0 (inverse of :func:`take_rows`)."""
    first = parts[0]
    if torch.is_tensor(first):
        return torch.cat(parts, 0) if first.dim() > 0 else first
    if isinstance(first, dict):
        return {k: concat_batches([p[k] for p in parts]) for k in first}
    if isinstance(first, tuple | list):
        return type(first)(concat_batches([p[i] for p in parts]) for i in range(len(first)))
    return first


def seeded_subset(data: Iterable[Any], max_samples: int, seed: int = 0) -> list[Any]:
    """A uniformly random subset of ``max_samples`` samples, in one pass, deterministic under ``seed``.

    Reservoir sampling (Vitter's algorithm R) over individual samples: memory is the
    ``max_samples`` kept samples plus the batch being read, whatever the size of the
    data. The kept samples are regrouped by the batch they came from (so batches of
    different sequence lengths or image sizes are never mixed) and returned in data
    order. When the data has no more than ``max_samples`` samples, all are returned.

    Raises:
        UserInputError: empty data, NaN/Inf inputs, bad batch types, bad ``max_samples``.
    """
    if max_samples < 1:
        raise UserInputError(f"max_samples must be >= 1, got {max_samples}.")
    gen = torch.Generator().manual_seed(int(seed))
    # reservoir[slot] = (batch index, row in batch, the sample as a 1-row batch)
    reservoir: list[tuple[int, int, Any]] = []
    seen = 0
    for b_idx, batch in enumerate(iter_batches(data)):
        n = batch_size(batch)
        if seen + n <= max_samples:  # still filling: keep the whole batch, one copy
            reservoir.extend((b_idx, r, None) for r in range(n))
            _store_rows(reservoir, len(reservoir) - n, batch, torch.arange(n))
            seen += n
            continue
        # Algorithm R: the t-th sample (0-based) replaces slot j ~ U{0..t} if j < k.
        t = torch.arange(seen, seen + n, dtype=torch.float64)
        j = (torch.rand(n, generator=gen, dtype=torch.float64) * (t + 1)).floor().long()
        rows, slots = [], []
        for r in range(n):
            if len(reservoir) < max_samples:
                reservoir.append((b_idx, r, None))
                rows.append(r)
                slots.append(len(reservoir) - 1)
            elif int(j[r]) < max_samples:
                slot = int(j[r])
                # A later sample of the same batch may evict an earlier one: keep the last.
                if slot in slots:
                    k = slots.index(slot)
                    rows.pop(k)
                    slots.pop(k)
                reservoir[slot] = (b_idx, r, None)
                rows.append(r)
                slots.append(slot)
        for slot, r in zip(slots, rows, strict=True):
            reservoir[slot] = (b_idx, r, take_rows(batch, torch.tensor([r])))
        seen += n
    return _regroup(reservoir)


def _store_rows(reservoir: list[tuple[int, int, Any]], start: int, batch: Any, rows: torch.Tensor) -> None:
    for i, r in enumerate(rows.tolist()):
        b_idx, _, _ = reservoir[start + i]
        reservoir[start + i] = (b_idx, r, take_rows(batch, torch.tensor([r])))


def _regroup(reservoir: list[tuple[int, int, Any]]) -> list[Any]:
    """Kept samples back into batches: one batch per source batch, rows in source order."""
    by_batch: dict[int, list[tuple[int, Any]]] = {}
    for b_idx, r, sample in reservoir:
        by_batch.setdefault(b_idx, []).append((r, sample))
    out = []
    for b_idx in sorted(by_batch):
        rows = sorted(by_batch[b_idx], key=lambda item: item[0])
        out.append(concat_batches([s for _, s in rows]))
    return out


def calibration_batches(data: Iterable[Any], max_samples: int | None, seed: int = 0) -> Iterable[Any]:
    """The data itself when uncapped, else a seeded subset of ``max_samples`` samples."""
    if max_samples is None:
        return data
    return seeded_subset(data, max_samples, seed)


def count_samples(data: Iterable[Any]) -> int:
    """Number of samples in an iterable of batches (validates every batch)."""
    return sum(batch_size(b) for b in iter_batches(data))
