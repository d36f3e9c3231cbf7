"""The CPU (oneDNN) backend against the reference oracle.

Accumulators are compared bit-exactly by running with unit scales, no bias and fp32
output (``float(acc)`` is exact while ``|acc| < 2^24``, which the shapes here keep);
epilogues are compared to float rounding, requantized outputs to one code.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantune import kernels
from quantune.kernels import cpu_caps
from quantune.kernels.weights import QuantizedWeight

pytestmark = pytest.mark.skipif(
    "onednn" not in kernels.available_backends(), reason="oneDNN int8 ops unavailable"
)


def _weight(shape, bits=8, symmetric=True, seed=0) -> QuantizedWeight:
    g = torch.Generator().manual_seed(seed)
    hi = (1 << (bits - 1)) - 1
    lo = -hi if symmetric else -hi - 1
    codes = torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int8)
    n = shape[0]
    scale = torch.rand(n, generator=g) * 0.02 + 0.001
    zp = torch.zeros(n, dtype=torch.int32) if symmetric else torch.randint(lo, hi + 1, (n,), generator=g, dtype=torch.int32)
    return QuantizedWeight(codes, bits, scale, zp)


def _acts(shape, dtype=torch.uint8, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lo, hi = (0, 255) if dtype == torch.uint8 else (-128, 127)
    return torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int16).to(dtype)


def _unit(w: QuantizedWeight) -> QuantizedWeight:
    return QuantizedWeight(w.codes, w.bits, torch.ones(w.out_channels), w.zero_point)


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 40),
    k=st.integers(1, 300),
    n=st.integers(1, 40),
    bits=st.sampled_from([2, 3, 4, 8]),
    zx=st.integers(0, 255),
    signed=st.booleans(),
)
def test_linear_accumulators_bit_exact(m, k, n, bits, zx, signed):
    w = _unit(_weight((n, k), bits))
    qx = _acts((m, k), torch.int8 if signed else torch.uint8)
    zx = zx - 128 if signed else zx
    ref = kernels.linear(qx, 1.0, zx, w, backend="reference")
    out = kernels.linear(qx, 1.0, zx, w, backend="onednn")
    assert torch.equal(out, ref)


@pytest.mark.parametrize("bits,symmetric", [(8, True), (4, True), (4, False), (2, False), (7, False)])
def test_linear_weight_widths_and_zero_points(bits, symmetric):
    w = _unit(_weight((24, 130), bits, symmetric))
    qx = _acts((9, 130))
    ref = kernels.linear(qx, 1.0, 77, w, backend="reference")
    assert torch.equal(kernels.linear(qx, 1.0, 77, w, backend="onednn"), ref)


def test_asymmetric_8bit_weights_fall_back_to_reference():
    w = _weight((8, 16), 8, symmetric=False)
    w.zero_point[0] = 100  # centred codes no longer fit int8
    assert kernels.dispatch.selected_backend("linear", _acts((2, 16)), w) == "reference"


@pytest.mark.parametrize("act", [None, "relu", "relu6", "clamp:-0.5:0.75", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.uint8, torch.int8])
@pytest.mark.parametrize("shape", [(1, 7, 5), (17, 64, 33), (3, 4, 2, 96, 40)])
def test_linear_epilogue_matches_reference(act, out_dtype, shape):
    *lead, k, n = shape
    w = _weight((n, k), 8)
    qx = _acts((*lead, k))
    bias = torch.randn(n)
    kw = dict(out_scale=0.03, out_zero_point=5 if out_dtype == torch.uint8 else -3)
    ref = kernels.linear(qx, 0.02, 120, w, bias, act, out_dtype, "reference", **kw)
    out = kernels.linear(qx, 0.02, 120, w, bias, act, out_dtype, "onednn", **kw)
    assert out.dtype == out_dtype and out.shape == ref.shape
    if out_dtype in (torch.uint8, torch.int8):
        assert (out.int() - ref.int()).abs().max() <= 1  # ties may round either way
    else:
        torch.testing.assert_close(out.float(), ref.float(), rtol=1e-2 if out_dtype == torch.bfloat16 else 1e-5, atol=1e-4)


CONV_CASES = [
    # (n, cin, h, w, cout, k, stride, pad, dilation, groups)
    (1, 3, 7, 7, 4, 3, 1, 1, 1, 1),
    (2, 16, 9, 11, 8, 1, 1, 0, 1, 1),
    (2, 12, 8, 8, 12, 3, 2, 1, 1, 12),  # depthwise
    (1, 8, 10, 10, 6, 3, 1, 2, 2, 2),
    (1, 5, 6, 6, 7, 5, 1, 2, 1, 1),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("bits", [8, 4])
def test_conv2d_accumulators_bit_exact(case, bits):
    n, c, h, wd, co, k, s, p, d, g = case
    w = _unit(_weight((co, c // g, k, k), bits))
    qx = _acts((n, c, h, wd)).contiguous(memory_format=torch.channels_last)
    args = (None, (s, s), (p, p), (d, d), g)
    ref = kernels.conv2d(qx, 1.0, 131, w, *args, backend="reference")
    out = kernels.conv2d(qx, 1.0, 131, w, *args, backend="onednn")
    assert torch.equal(out, ref)


@pytest.mark.parametrize("act", [None, "relu", "relu6", "gelu"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.uint8])
def test_conv2d_epilogue_matches_reference(act, out_dtype):
    w = _weight((8, 6, 3, 3), 8)
    qx = _acts((2, 6, 9, 9), torch.int8)
    bias = torch.randn(8)
    args = (bias, (1, 1), (1, 1), (1, 1), 1, act, out_dtype)
    ref = kernels.conv2d(qx, 0.02, -4, w, *args, "reference", out_scale=0.05, out_zero_point=7)
    out = kernels.conv2d(qx, 0.02, -4, w, *args, "onednn", out_scale=0.05, out_zero_point=7)
    if out_dtype == torch.uint8:
        assert (out.int() - ref.int()).abs().max() <= 1
    else:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)


def test_conv1d_bit_exact():
    w = _unit(_weight((6, 4, 3), 8))
    qx = _acts((2, 4, 19))
    ref = kernels.conv1d(qx, 1.0, 9, w, None, 2, 1, 1, 1, backend="reference")
    out = kernels.conv1d(qx, 1.0, 9, w, None, 2, 1, 1, 1, backend="onednn")
    assert torch.equal(out, ref)


def test_worst_case_codes_exact_on_any_isa():
    # All-255 activations x all-127 weights saturate int16 pair sums on AVX2 kernels;
    # the split weight keeps the result exact there.
    w = _unit(QuantizedWeight(torch.full((4, 200), 127, dtype=torch.int8), 8, torch.ones(4), torch.zeros(4, dtype=torch.int32)))
    qx = torch.full((3, 200), 255, dtype=torch.uint8)
    out = kernels.linear(qx, 1.0, 0, w, backend="onednn")
    assert torch.equal(out, torch.full((3, 4), 255.0 * 127 * 200))
    split = w.backend_cache["onednn_linear"].extra is not None
    assert split == cpu_caps.u8s8_saturates()


def test_prepack_is_cached():
    w = _weight((8, 32))
    qx = _acts((2, 32))
    kernels.linear(qx, 0.1, 0, w, backend="onednn")
    packed = w.backend_cache["onednn_linear"]
    kernels.linear(qx, 0.1, 0, w, backend="onednn")
    assert w.backend_cache["onednn_linear"] is packed
