"""Sub-byte weight storage: pack / unpack round trips and the bytes reported."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantune.kernels.packing import pack_codes, packed_row_bytes, storage_bits, unpack_codes
from quantune.kernels.weights import QuantizedWeight


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(2, 8), n=st.integers(1, 9), k=st.integers(1, 37), seed=st.integers(0, 2**16))
def test_round_trip(bits, n, k, seed):
    sb = storage_bits(bits)
    g = torch.Generator().manual_seed(seed)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    codes = torch.randint(lo, hi + 1, (n, k), generator=g, dtype=torch.int8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (n, packed_row_bytes(k, bits)) == (n, (k * sb + 7) // 8)
    assert torch.equal(unpack_codes(packed, bits, k), codes)


def test_layout_is_little_endian_within_a_byte():
    codes = torch.tensor([[1, -1, 2, -2]], dtype=torch.int8)
    assert pack_codes(codes, 4).tolist() == [[0xF1, 0xE2]]
    assert pack_codes(torch.tensor([[1, -1, 0, -2]], dtype=torch.int8), 2).tolist() == [[0b10_00_11_01]]


def test_out_of_range_codes_are_rejected():
    with pytest.raises(ValueError, match="4-bit"):
        pack_codes(torch.tensor([[8]], dtype=torch.int8), 4)


@pytest.mark.parametrize("bits,expected", [(8, 6 * 10), (4, 6 * 5), (3, 6 * 5), (2, 6 * 3)])
def test_packed_nbytes_counts_stored_bytes(bits, expected):
    hi = (1 << (bits - 1)) - 1
    codes = torch.randint(-hi, hi + 1, (6, 10), dtype=torch.int8)
    qw = QuantizedWeight(codes, bits, torch.ones(6), torch.zeros(6, dtype=torch.int32))
    assert qw.packed_nbytes() == expected == qw.packed().numel()


def test_from_packed_restores_conv_weight():
    codes = torch.randint(-7, 8, (4, 3, 3, 3), dtype=torch.int8)
    qw = QuantizedWeight(codes, 4, torch.rand(4), torch.zeros(4, dtype=torch.int32))
    back = QuantizedWeight.from_packed(qw.packed(), 4, tuple(codes.shape), qw.scale, qw.zero_point)
    assert torch.equal(back.codes, codes)
    assert back.packed_nbytes() == 4 * 14
