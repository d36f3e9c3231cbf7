"""A preallocated store for the rows a collecting pass keeps, part after part.

Collecting a layer's samples interleaves two kinds of allocation: each forward pass's
large, short-lived activations, and the small slices kept from it until the end. Kept
slices allocated one by one land in the holes the activations leave and pin the heap
around them, so the resident size climbs with the number of passes (EfficientNet-Lite0,
16 MB cache: collecting 64 images peaked ~100 MB higher than 16 images with the same
cache). One buffer sized for every kept row, allocated before the passes, keeps the
kept rows out of the activations' way and spares the final concatenation's copy.
"""

from __future__ import annotations

import torch


class RowStore:
    """Rows of equal shape written part by part into one buffer of ``capacity`` rows.

    A part of another shape or dtype, or one that does not fit, is kept as its own
    copy, so mixed image sizes still work (they only lose the single buffer).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.buffer: torch.Tensor | None = None
        self.used = 0
        self.slots: dict[int, tuple[int, int]] = {}  # key -> (first row, rows) in the buffer
        self.loose: dict[int, torch.Tensor] = {}

    def __contains__(self, key: int) -> bool:
        return key in self.slots or key in self.loose

    def keys(self) -> list[int]:
        return sorted([*self.slots, *self.loose])

    def put(self, key: int, rows: torch.Tensor) -> None:
        """Copy ``rows`` (``[n, ...]``) in under ``key``."""
        if self.buffer is None and self.capacity > 0:
            self.buffer = torch.empty((self.capacity, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
        n = int(rows.shape[0])
        fits = (self.buffer is not None and rows.shape[1:] == self.buffer.shape[1:] and rows.dtype == self.buffer.dtype
                and self.used + n <= self.capacity)
        if not fits:
            self.loose[key] = rows.clone()
            return
        assert self.buffer is not None
        self.buffer[self.used:self.used + n].copy_(rows)
        self.slots[key] = (self.used, n)
        self.used += n

    def get(self, key: int) -> torch.Tensor:
        if key in self.loose:
            return self.loose[key]
        start, n = self.slots[key]
        assert self.buffer is not None
        return self.buffer[start:start + n]

    def gather(self, keys: list[int]) -> torch.Tensor:
        """The rows of ``keys`` in that order: a view of the buffer (no copy) when they are
        exactly its rows, else one concatenation."""
        in_buffer = sorted(self.slots, key=lambda k: self.slots[k][0])
        if self.buffer is not None and keys == in_buffer:
            return self.buffer[:self.used]
        return torch.cat([self.get(k) for k in keys])
