"""Sub-byte weight storage: int4 codes two per byte, int2 codes four per byte.

Codes are signed (``bits``-wide two's complement, as :class:`QuantizedWeight` holds
them). Packing works on the flattened reduction axis of each output channel (``K`` for
Linear, ``Cin/g * kh * kw`` for convolutions), which is padded with zero codes up to a
whole number of bytes per row, so every row starts on a byte boundary and can be
unpacked independently (what a GEMM kernel that unpacks tiles in registers needs).

Layout: code ``k`` of a row lives in byte ``k // per_byte`` at bit offset
``(k % per_byte) * bits`` (little-endian within the byte). The Triton kernel unpacks
this exact layout in-kernel; the CPU backends unpack once to int8 and cache the result.
"""

from __future__ import annotations

import torch

PACKED_BITS = (2, 4)


def storage_bits(bits: int) -> int:
    """Bits one code occupies when stored: 2, 4 or 8 (3-bit codes use 4, 5-7 use 8)."""
    if not 2 <= bits <= 8:
        raise ValueError(f"code width must be 2..8 bits, got {bits}")
    return 2 if bits <= 2 else 4 if bits <= 4 else 8


def packed_row_bytes(k: int, bits: int) -> int:
    """Bytes one row of ``k`` codes takes when stored at :func:`storage_bits`."""
    per_byte = 8 // storage_bits(bits)
    return (k + per_byte - 1) // per_byte


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack signed codes ``[N, ...]`` into ``uint8 [N, packed_row_bytes(K)]``.

    8-bit storage returns the codes reinterpreted as uint8 (a copy), so the same
    unpack call works at every width.

    Raises:
        ValueError: a code does not fit the signed ``bits``-wide range.
    """
    sb = storage_bits(bits)
    rows = codes.reshape(codes.shape[0], -1).to(torch.int16)
    lo, hi = -(1 << (sb - 1)), (1 << (sb - 1)) - 1
    if rows.numel() and (int(rows.min()) < lo or int(rows.max()) > hi):
        raise ValueError(f"codes outside the signed {sb}-bit range [{lo}, {hi}]")
    if sb == 8:
        return rows.to(torch.int8).view(torch.uint8).contiguous()
    per_byte = 8 // sb
    n, k = rows.shape
    kp = packed_row_bytes(k, bits) * per_byte
    padded = torch.zeros((n, kp), dtype=torch.int16)
    padded[:, :k] = rows
    # Two's complement truncated to sb bits, then shifted into its slot of the byte.
    fields = (padded & ((1 << sb) - 1)).reshape(n, kp // per_byte, per_byte)
    shifts = torch.arange(per_byte, dtype=torch.int16) * sb
    return (fields << shifts).sum(dim=-1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``uint8 [N, bytes]`` -> signed ``int8 [N, k]``."""
    sb = storage_bits(bits)
    if sb == 8:
        return packed.view(torch.int8)[:, :k].contiguous()
    per_byte = 8 // sb
    shifts = torch.arange(per_byte, dtype=torch.int16, device=packed.device) * sb
    fields = (packed.to(torch.int16).unsqueeze(-1) >> shifts) & ((1 << sb) - 1)
    # Sign-extend the sb-bit field: values >= 2^(sb-1) are negative.
    signed = fields - ((fields >> (sb - 1)) << sb)
    return signed.reshape(packed.shape[0], -1)[:, :k].to(torch.int8).contiguous()
