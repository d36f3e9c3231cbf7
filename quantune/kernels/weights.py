"""Quantized weights as the integer GEMM core consumes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from quantune.kernels.packing import pack_codes, packed_row_bytes, storage_bits, unpack_codes


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

    @property
    def reduction_size(self) -> int:
        """Codes per output channel (``K``, or ``Cin/g * kh * kw`` for convolutions)."""
        return int(self.codes[0].numel())

    def packed_nbytes(self) -> int:
        """Bytes of the weight codes as stored: int4 two per byte, int2 four per byte.

        Each row is padded to whole bytes (see :mod:`quantune.kernels.packing`); 3-bit
        codes are stored in 4-bit fields and 5-7-bit codes in bytes.
        """
        return self.out_channels * packed_row_bytes(self.reduction_size, self.bits)

    def packed(self) -> torch.Tensor:
        """The stored form: ``uint8 [N, packed_row_bytes]`` (cached)."""
        if "packed" not in self.backend_cache:
            self.backend_cache["packed"] = pack_codes(self.codes, self.bits)
        return self.backend_cache["packed"]

    @classmethod
    def from_packed(
        cls,
        packed: torch.Tensor,
        bits: int,
        shape: tuple[int, ...],
        scale: torch.Tensor,
        zero_point: torch.Tensor,
    ) -> QuantizedWeight:
        """Rebuild a weight from its stored form (codes unpacked once to int8)."""
        k = 1
        for d in shape[1:]:
            k *= int(d)
        codes = unpack_codes(packed, bits, k).reshape(shape)
        qw = cls(codes, bits, scale, zero_point)
        if storage_bits(bits) < 8:
            qw.backend_cache["packed"] = packed
        return qw

    def max_abs_code(self) -> int:
        """Largest ``|code - zero_point|`` (cached): decides whether a kernel can saturate."""
        if "max_abs_code" not in self.backend_cache:
            w = self.codes.to(torch.int32).reshape(self.out_channels, -1)
            w = w - self.per_channel_zero_point()[:, None]
            self.backend_cache["max_abs_code"] = int(w.abs().max()) if w.numel() else 0
        return self.backend_cache["max_abs_code"]
