"""Integer mode of QuantizedLayer: exact accumulators, prepacking, per-layer decisions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantune.config import ActQuant, LayerQuantConfig, WeightQuant
from quantune.kernels import reference
from quantune.modules import QuantizedLayer
from quantune.quantizer import qparams_from_range


def _layer(module: nn.Module, wbits=8, abits=8, asym=True) -> QuantizedLayer:
    torch.manual_seed(0)
    cfg = LayerQuantConfig(WeightQuant(bits=wbits), ActQuant(bits=abits, symmetric=not asym))
    q = QuantizedLayer(module, cfg)
    wmax = q.weight.detach().abs().amax(dim=tuple(range(1, q.weight.dim())))
    q.set_weight_qparams(*qparams_from_range(-wmax, wmax, *q.w_qrange, True))
    q.set_act_qparams(*qparams_from_range(torch.tensor(-1.5), torch.tensor(2.5), *q.a_qrange, not asym))
    return q


MODULES = [
    lambda: nn.Linear(37, 19),
    lambda: nn.Conv2d(6, 10, 3, padding=1),
    lambda: nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8),
    lambda: nn.Conv2d(4, 6, 3, padding="same", dilation=2),
    lambda: nn.Conv1d(5, 7, 3, padding=1),
    lambda: nn.Conv2d(6, 10, 3, padding=(1, 2), padding_mode="reflect"),
    lambda: nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, padding_mode="replicate"),
    lambda: nn.Conv2d(4, 6, 3, padding="same", dilation=2, padding_mode="circular"),
    lambda: nn.Conv1d(5, 7, 5, padding=2, padding_mode="reflect"),
]
INPUTS = {nn.Linear: (3, 5, 37), nn.Conv2d: (2, None, 9, 9), nn.Conv1d: (2, 5, 13)}


def _input(m: nn.Module) -> torch.Tensor:
    shape = list(INPUTS[type(m)])
    if shape[1] is None:
        shape[1] = m.in_channels
    return torch.randn(*shape)


@pytest.mark.parametrize("make", MODULES)
@pytest.mark.parametrize("wbits,asym", [(8, True), (4, True), (8, False)])
def test_integer_mode_matches_simulation(make, wbits, asym):
    m = make()
    q = _layer(m, wbits, asym=asym)
    x = _input(m)
    q.mode = "simulate"
    ys = q(x)
    q.mode = "integer"
    yi = q(x)
    torch.testing.assert_close(yi, ys, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("asym", [True, False])
def test_fast_input_codes_equal_reference_codes(asym):
    q = _layer(nn.Linear(8, 4), asym=asym)
    x = torch.randn(64, 8) * 3
    codes, zp = q.quantize_input_u8(x)
    ref = q.quantize_input(x)
    shift = 0 if asym else 128
    assert codes.dtype == torch.uint8
    assert torch.equal(codes.int() - zp, ref.int() - int(q.a_zero_point))
    assert zp == int(q.a_zero_point) + shift


def test_integer_accumulators_equal_reference_on_the_fast_backend():
    q = _layer(nn.Linear(300, 17))
    x = torch.randn(5, 300)
    qx, zx = q.quantize_input_u8(x)
    qw = q.quantized_weight()
    acc = reference.linear_accumulate(qx, zx, qw)
    y = q._run_integer(qx, float(q.a_scale), zx, qw, torch.float32)
    expect = reference.apply_epilogue(acc, float(q.a_scale), qw, q.bias, None, 1)
    torch.testing.assert_close(y, expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_non_zero_padding_modes_pad_the_codes_as_the_float_layer_pads(mode):
    conv = nn.Conv2d(6, 10, 3, padding=2, dilation=2, padding_mode=mode)
    q = _layer(conv)
    x = torch.randn(2, 6, 9, 11)
    q.mode = "float"  # the quantized layer's float op is the module's own
    with torch.no_grad():
        torch.testing.assert_close(q(x), conv(x), rtol=1e-5, atol=1e-5)
    # The integer path: the mode's padding of the input codes, then an unpadded conv.
    qx, zx = q.quantize_input_u8(x)
    qw, sx = q.quantized_weight(), float(q.a_scale)
    acc = reference.conv2d_accumulate(F.pad(qx, (2, 2, 2, 2), mode=mode), zx, qw, (1, 1), (0, 0), (2, 2), 1)
    got = q._run_integer(qx, sx, zx, qw, torch.float32)
    torch.testing.assert_close(got, reference.apply_epilogue(acc, sx, qw, q.bias, None, 1), rtol=1e-5, atol=1e-5)
    zero_padded = reference.conv2d_accumulate(qx, zx, qw, (1, 1), (2, 2), (2, 2), 1)
    assert not torch.allclose(got, reference.apply_epilogue(zero_padded, sx, qw, q.bias, None, 1), atol=1e-3)
    q.prepack()  # a minimal input must be large enough for the mode's padding


def test_switching_to_integer_prepacks():
    q = _layer(nn.Linear(16, 8))
    q.mode = "integer"
    cache = q.quantized_weight().backend_cache
    assert any(k == "onednn_linear" for k in cache) or q.integer_decision is None


def test_depthwise_decision_is_measured_and_recorded():
    q = _layer(nn.Conv2d(8, 8, 3, padding=1, groups=8))
    q.mode = "integer"
    q(torch.randn(1, 8, 12, 12))
    d = q.integer_decision
    assert d is not None and d.reason == "measured" and d.path in ("integer", "float")
    assert d.integer_ms is not None and d.float_ms is not None
    assert q.describe()["integer_decision"]["path"] == d.path
    q.backend = "reference"  # pinning a backend re-decides without timing
    assert q.integer_decision is None
    q(torch.randn(1, 8, 12, 12))
    assert q.integer_decision.path == "integer" and q.integer_decision.reason == "pinned"


def test_size_bytes_counts_packed_int4():
    q8 = _layer(nn.Linear(64, 32), wbits=8)
    q4 = _layer(nn.Linear(64, 32), wbits=4)
    assert q8.size_bytes() - q4.size_bytes() == 32 * 64 // 2


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_fused_quantize_is_bit_identical_to_the_quantizer(layout, monkeypatch):
    from quantune.kernels.quantize_input import quantize_to_uint8

    # tests/conftest.py turns compilation off for speed; this test is about the compiled path.
    monkeypatch.setattr("quantune.kernels.quantize_input._disabled", False)
    from quantune.quantizer import quantize

    x = torch.randn(4, 16, 40, 40) * 3
    x[0, 0, 0, :20] = (torch.arange(20) - 10 + 0.5) * 0.02  # exact ties: half to even
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = x.transpose(2, 3)
    scale = torch.tensor(0.02)
    q = quantize_to_uint8(x, scale, 117, 0, 255)
    assert torch.equal(q, quantize(x, scale, torch.tensor(117), 0, 255).to(torch.uint8))
    if layout == "channels_last":
        assert q.is_contiguous(memory_format=torch.channels_last)


def test_two_gemm_weights_are_measured_on_saturating_cpus():
    from quantune.kernels import cpu_caps

    q = _layer(nn.Linear(64, 32))  # per-channel max codes are +-127
    q.mode = "integer"
    q(torch.randn(4, 64))
    expected = "measured" if cpu_caps.u8s8_saturates() else "default"
    assert q.integer_decision.reason == expected
    q7 = _layer(nn.Linear(64, 32), wbits=7)  # |w| <= 63: one saturation-free GEMM
    q7.mode = "integer"
    q7(torch.randn(4, 64))
    assert q7.integer_decision.reason == "default" and q7.integer_decision.path == "integer"
