"""Per-output-channel running sums of a layer's outputs (shared by the statistics corrections)."""

from __future__ import annotations

import torch


def channel_dims(out: torch.Tensor, kind: str) -> tuple[int, ...]:
    """Dims reduced to get per-channel values: all but the last (Linear) or all but 1 (conv)."""
    if kind == "linear":
        return tuple(range(out.dim() - 1))
    return (0,) + tuple(range(2, out.dim()))


def channel_view(v: torch.Tensor, out: torch.Tensor, kind: str) -> torch.Tensor:
    """``v`` ``[C]`` shaped to broadcast against the layer output ``out``."""
    if kind == "linear":
        return v
    return v.reshape(1, -1, *([1] * (out.dim() - 2)))


class ChannelMoments:
    """Streaming per-channel count, sum and sum of squares (float64)."""

    def __init__(self) -> None:
        self.count = 0
        self.sum: torch.Tensor | None = None
        self.sum_sq: torch.Tensor | None = None

    def update(self, out: torch.Tensor, kind: str) -> None:
        dims = channel_dims(out, kind)
        x = out.detach().double()
        s, s2 = x.sum(dims), (x * x).sum(dims)
        self.count += out.numel() // out.shape[1 if kind != "linear" else -1]
        self.sum = s if self.sum is None else self.sum + s
        self.sum_sq = s2 if self.sum_sq is None else self.sum_sq + s2

    @property
    def mean(self) -> torch.Tensor:
        assert self.sum is not None
        return self.sum / max(self.count, 1)

    @property
    def var(self) -> torch.Tensor:
        assert self.sum_sq is not None
        m = self.mean
        return (self.sum_sq / max(self.count, 1) - m * m).clamp(min=0.0)
