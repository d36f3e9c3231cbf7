"""The Triton CUDA backend against the reference oracle (``-m gpu``; skipped without CUDA)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from quantune import kernels
from quantune.kernels.weights import QuantizedWeight

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton"),
]


def _weight(n, k, bits, device="cuda", seed=0) -> QuantizedWeight:
    g = torch.Generator().manual_seed(seed)
    hi = (1 << (bits - 1)) - 1
    codes = torch.randint(-hi, hi + 1, (n, k), generator=g, dtype=torch.int8)
    scale = torch.rand(n, generator=g) * 0.02 + 0.001
    return QuantizedWeight(codes.to(device), bits, scale.to(device), torch.zeros(n, dtype=torch.int32, device=device))


SHAPES = [(1, 7, 5), (1, 64, 33), (17, 130, 40), (33, 257, 129), (128, 512, 256), (5, 4096, 64)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bits", [8, 4, 2])
def test_accumulators_bit_exact(shape, bits):
    m, k, n = shape
    w = _weight(n, k, bits)
    w = QuantizedWeight(w.codes, bits, torch.ones(n, device="cuda"), w.zero_point)
    qx = torch.randint(0, 256, (m, k), dtype=torch.uint8, device="cuda")
    ref = kernels.linear(qx, 1.0, 77, w, backend="reference")
    out = kernels.linear(qx, 1.0, 77, w, backend="triton")
    assert torch.equal(out, ref)  # |acc| < 2^24 here, so fp32 holds it exactly


@pytest.mark.parametrize("act", [None, "relu", "relu6", "clamp:-0.5:0.75", "gelu"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.uint8, torch.int8])
def test_epilogue_matches_reference(act, out_dtype):
    w = _weight(48, 96, 8)
    qx = torch.randint(0, 256, (3, 9, 96), dtype=torch.uint8, device="cuda")
    bias = torch.randn(48, device="cuda")
    kw = dict(out_scale=0.03, out_zero_point=5 if out_dtype == torch.uint8 else -3)
    ref = kernels.linear(qx, 0.02, 120, w, bias, act, out_dtype, "reference", **kw)
    out = kernels.linear(qx, 0.02, 120, w, bias, act, out_dtype, "triton", **kw)
    if out_dtype in (torch.uint8, torch.int8):
        assert (out.int() - ref.int()).abs().max() <= 1
    else:
        torch.testing.assert_close(out.float(), ref.float(), rtol=1e-2 if out_dtype == torch.bfloat16 else 1e-5, atol=1e-4)


def test_int4_weights_are_unpacked_in_kernel():
    w = _weight(64, 100, 4)
    kernels.linear(torch.zeros(2, 100, dtype=torch.uint8, device="cuda"), 1.0, 0, w, backend="triton")
    prep = w.backend_cache[("triton", "cuda:0")]
    assert prep["packed4"] and prep["w"].shape == (64, 50)


def test_conv2d_lowering_bit_exact():
    codes = torch.randint(-127, 128, (8, 6, 3, 3), dtype=torch.int8, device="cuda")
    w = QuantizedWeight(codes, 8, torch.ones(8, device="cuda"), torch.zeros(8, dtype=torch.int32, device="cuda"))
    qx = torch.randint(0, 256, (2, 6, 9, 9), dtype=torch.uint8, device="cuda")
    args = (None, (2, 2), (1, 1), (1, 1), 1)
    ref = kernels.conv2d(qx, 1.0, 11, w, *args, backend="reference")
    out = kernels.conv2d(qx, 1.0, 11, w, *args, backend="triton")
    assert torch.equal(out, ref)


def test_auto_uses_triton_on_cuda():
    w = _weight(16, 32, 8)
    assert kernels.dispatch.selected_backend("linear", torch.zeros(1, 32, dtype=torch.uint8, device="cuda"), w) == "triton"
