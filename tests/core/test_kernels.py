"""The public integer ops, the reference oracle and the dispatcher."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from quantune import kernels
from quantune.kernels import reference
from quantune.kernels.epilogue import Epilogue
from quantune.kernels.weights import QuantizedWeight


def _w(n, k, bits=8):
    hi = (1 << (bits - 1)) - 1
    return QuantizedWeight(torch.randint(-hi, hi + 1, (n, k), dtype=torch.int8), bits,
                           torch.rand(n) * 0.1, torch.zeros(n, dtype=torch.int32))


def test_reference_linear_is_the_integer_formula():
    w = _w(5, 11)
    qx = torch.randint(0, 256, (3, 11), dtype=torch.uint8)
    acc = reference.linear_accumulate(qx, 9, w)
    assert acc.dtype == torch.int32
    assert torch.equal(acc.long(), (qx.long() - 9) @ w.codes.long().t())


def test_reference_conv_matches_float_conv_on_integers():
    codes = torch.randint(-127, 128, (4, 3, 3, 3), dtype=torch.int8)
    w = QuantizedWeight(codes, 8, torch.ones(4), torch.zeros(4, dtype=torch.int32))
    qx = torch.randint(0, 256, (2, 3, 6, 6), dtype=torch.uint8)
    acc = reference.conv2d_accumulate(qx, 7, w, (1, 1), (1, 1), (1, 1), 1)
    expect = F.conv2d(qx.double() - 7, codes.double(), padding=1)
    assert torch.equal(acc.double(), expect)


def test_requantized_output_rounds_and_clamps():
    w = QuantizedWeight(torch.ones(1, 1, dtype=torch.int8), 8, torch.ones(1), torch.zeros(1, dtype=torch.int32))
    qx = torch.tensor([[0], [1], [3], [200]], dtype=torch.uint8)
    out = kernels.linear(qx, 1.0, 0, w, out_dtype=torch.uint8, backend="reference", out_scale=2.0, out_zero_point=10)
    # 0/2 -> 0, 1/2 -> 0 (half to even), 3/2 -> 2, 200/2 = 100 -> 110
    assert out.flatten().tolist() == [10, 10, 12, 110]
    out = kernels.linear(qx, 1.0, 0, w, out_dtype=torch.int8, backend="reference", out_scale=1.0, out_zero_point=0)
    assert out.flatten().tolist() == [0, 1, 3, 127]


@pytest.mark.parametrize("bad", [dict(activation="swish"), dict(activation="clamp:2:1"),
                                 dict(out_dtype=torch.int32), dict(out_dtype=torch.uint8, out_zero_point=300),
                                 dict(out_dtype=torch.int8, out_scale=0.0)])
def test_epilogue_validation(bad):
    with pytest.raises(ValueError):
        Epilogue(**bad)


def test_unknown_or_unsupported_backend_is_a_clear_error():
    w = _w(2, 3)
    qx = torch.zeros(1, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="Unknown kernel backend"):
        kernels.linear(qx, 1.0, 0, w, backend="nope")
    if torch.cuda.is_available() is False and "cuda" in kernels.available_backends():
        pytest.fail("cuda backend registered without CUDA")


def test_auto_falls_back_to_reference_for_unsupported_calls():
    w = _w(2, 3)
    qx = torch.zeros(1, 3, dtype=torch.int32)  # wide codes: only the reference takes them
    assert kernels.dispatch.selected_backend("linear", qx, w) == "reference"
    assert kernels.linear(qx, 1.0, 0, w).shape == (1, 2)


def test_import_quantune_stays_cheap():
    code = ("import sys, quantune, quantune.kernels; "
            "bad = [m for m in ('onnxruntime', 'triton', 'quantune.kernels.cpu_backend', "
            "'quantune.kernels.cuda_backend') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
