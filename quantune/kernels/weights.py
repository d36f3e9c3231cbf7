"""Quantized weights as the integer GEMM core consumes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class QuantizedWeight:
    """Integer weight codes with per-output-channel (or per-tensor) scale and zero point.

    Attributes:
        codes: int8 tensor, shape ``[N, K]`` for Linear or ``[Cout, Cin/groups, kh, kw]``
            for convolutions (PyTorch's own layouts: output channel first, K-major).
        bits: the code width (2-8); codes lie in the signed ``bits``-wide range.
        scale: float32 ``[N]`` (per channel) or 0-dim (per tensor).
        zero_point: int32, same shape as ``scale`` (0 for symmetric weights).
        backend_cache: prepacked forms built lazily by fast backends, keyed by backend
            name; never part of the saved state.
    """

    codes: torch.Tensor
    bits: int
    scale: torch.Tensor
    zero_point: torch.Tensor
    backend_cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def out_channels(self) -> int:
        return int(self.codes.shape[0])

    def per_channel_scale(self) -> torch.Tensor:
        """Scale broadcast to one value per output channel, float32 ``[N]``."""
        return self.scale.float().expand(self.out_channels).contiguous()

    def per_channel_zero_point(self) -> torch.Tensor:
        """Zero point broadcast to one value per output channel, int32 ``[N]``."""
        return self.zero_point.to(torch.int32).expand(self.out_channels).contiguous()

    @property
    def is_symmetric(self) -> bool:
        return bool((self.zero_point == 0).all())

    def packed_nbytes(self) -> int:
        """Bytes of the weight as stored packed (bits per code, rounded up per row)."""
        n = self.out_channels
        k = self.codes[0].numel()
        return n * ((k * self.bits + 7) // 8)
