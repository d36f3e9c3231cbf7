"""The FBGEMM small-batch backend against the exact oracle."""

from __future__ import annotations

import pytest
import torch

from quantune import kernels
from quantune.kernels import cpu_caps, fbgemm_backend
from quantune.kernels.weights import QuantizedWeight

pytestmark = pytest.mark.skipif(not fbgemm_backend.available(), reason="FBGEMM quantized ops unavailable")


def _weight(n: int, k: int, bits: int, seed: int, zero_point: int = 0) -> QuantizedWeight:
    g = torch.Generator().manual_seed(seed)
    hi = (1 << (bits - 1)) - 1
    codes = torch.randint(-hi, hi + 1, (n, k), generator=g).to(torch.int8)
    codes[:, 0] = hi  # the extreme code appears in every row
    scale = torch.rand(n, generator=g) * 0.05 + 0.001
    return QuantizedWeight(codes, bits, scale, torch.full((n,), zero_point, dtype=torch.int32))


def _codes(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.int16).to(torch.uint8)


@pytest.mark.parametrize(("m", "k", "n"), [(1, 7, 3), (16, 64, 33), (3, 513, 17), (64, 128, 64)])
@pytest.mark.parametrize("bits", [7, 4, 2])
def test_accumulators_match_the_oracle_exactly(m: int, k: int, n: int, bits: int) -> None:
    qx, w = _codes((m, k), seed=m + k), _weight(n, k, bits, seed=n)
    assert kernels.selected_backend("linear", qx, w) == "fbgemm"
    got = kernels.linear(qx, 1.0, 131, w, backend="fbgemm")
    want = kernels.linear(qx, 1.0, 131, w, backend="reference")
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("activation", [None, "relu", "relu6", "clamp:-0.5:0.75", "gelu"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.uint8])
def test_epilogue_matches_the_oracle(activation: str | None, out_dtype: torch.dtype) -> None:
    qx, w = _codes((2, 5, 96), seed=3), _weight(40, 96, 7, seed=4)
    bias = torch.randn(40, generator=torch.Generator().manual_seed(5))
    kw = dict(out_scale=0.02, out_zero_point=9) if out_dtype == torch.uint8 else {}
    got = kernels.linear(qx, 0.013, 120, w, bias, activation, out_dtype, "fbgemm", **kw)
    want = kernels.linear(qx, 0.013, 120, w, bias, activation, out_dtype, "reference", **kw)
    assert got.shape == want.shape == (2, 5, 40) and got.dtype == want.dtype
    if out_dtype == torch.uint8:
        assert (got.int() - want.int()).abs().max() <= 1  # a rounding tie at most
    else:
        assert torch.allclose(got.float(), want.float(), rtol=1e-2 if out_dtype == torch.bfloat16 else 1e-5,
                              atol=1e-4)


def test_takes_only_small_batches_and_exact_weights() -> None:
    w7 = _weight(8, 32, 7, seed=1)
    assert not fbgemm_backend.supports("linear", _codes((fbgemm_backend.MAX_ROWS + 1, 32), 0), w7)
    assert not fbgemm_backend.supports("conv2d", _codes((1, 32), 0), w7)
    w8 = _weight(8, 32, 8, seed=1)  # codes up to 127: pairs saturate int16 without VNNI
    assert fbgemm_backend.supports("linear", _codes((4, 32), 0), w8) == (not cpu_caps.u8s8_saturates())
    if cpu_caps.u8s8_saturates():
        # What exactness protects against: FBGEMM itself halves this accumulator here.
        qx = torch.full((1, 64), 255, dtype=torch.uint8)
        w = QuantizedWeight(torch.full((1, 64), 127, dtype=torch.int8), 8, torch.ones(1), torch.zeros(1, dtype=torch.int32))
        assert float(kernels.linear(qx, 1.0, 0, w)[0, 0]) == 255.0 * 127 * 64  # routed to an exact backend
