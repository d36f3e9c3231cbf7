"""SmoothQuant's per-input-channel scales inside QuantizedLayer: float product kept, integer
mode equal to simulation, saved and loaded, never chained into."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantune.config import ActQuant, LayerQuantConfig, WeightQuant
from quantune.errors import UserInputError
from quantune.input_smoothing import input_channel_factors, weights_by_input_channel
from quantune.modules import QuantizedLayer
from quantune.quantizer import qparams_from_range

MODULES = [
    lambda: nn.Linear(12, 7),
    lambda: nn.Conv2d(6, 10, 3, padding=1),
    lambda: nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8),  # depthwise
    lambda: nn.Conv2d(8, 6, 3, padding=1, groups=2),  # grouped
    lambda: nn.Conv1d(4, 5, 3, padding=1),
]


def _input(m: nn.Module) -> torch.Tensor:
    if isinstance(m, nn.Linear):
        x = torch.randn(3, 5, m.in_features)
        x[..., 0] *= 40.0  # an outlier channel
        return x
    spatial = (9, 9) if isinstance(m, nn.Conv2d) else (13,)
    x = torch.randn(2, m.in_channels, *spatial)
    x[:, 0] *= 40.0
    return x


def _random_case(make, seed: int) -> tuple[nn.Module, torch.Tensor, QuantizedLayer]:
    """A module, an input with an outlier channel, and the module smoothed by random scales."""
    torch.manual_seed(seed)
    m = make()
    in_ch = m.in_features if isinstance(m, nn.Linear) else m.in_channels
    return m, _input(m), _smoothed(m, torch.rand(in_ch) * 4 + 0.25)


def _smoothed(module: nn.Module, scales: torch.Tensor, wbits: int = 8) -> QuantizedLayer:
    cfg = LayerQuantConfig(WeightQuant(bits=wbits), ActQuant(smoothing=0.5))
    q = QuantizedLayer(module, cfg)
    q.set_input_smoothing(scales)
    wmax = q.weight.detach().abs().amax(dim=tuple(range(1, q.weight.dim())))
    q.set_weight_qparams(*qparams_from_range(-wmax, wmax, *q.w_qrange, True))
    return q


def test_grouped_layout_maps_each_weight_to_its_input_channel():
    conv = nn.Conv2d(8, 6, 3, groups=2)
    rows = weights_by_input_channel(conv.weight, groups=2)
    assert rows.shape == (8, 3 * 9)
    # Input channel 5 is group 1's second channel, read by output channels 3-5.
    torch.testing.assert_close(rows[5], conv.weight[3:6, 1].reshape(-1))
    factors = input_channel_factors(torch.arange(1.0, 9.0), conv.weight, groups=2)
    assert factors.shape == (6, 4, 1, 1)
    assert float(factors[4, 1]) == 6.0 and float(factors[0, 3]) == 4.0


@pytest.mark.parametrize("make", MODULES)
def test_float_product_is_unchanged(make):
    m, x, q = _random_case(make, 0)
    q.mode = "float"
    with torch.no_grad():
        torch.testing.assert_close(q(x), m(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("make", MODULES)
def test_integer_mode_equals_simulation_with_smoothing(make):
    _, x, q = _random_case(make, 1)
    xs = q.smooth_input(x)
    q.set_act_qparams(*qparams_from_range(xs.min(), xs.max(), *q.a_qrange, False))
    with torch.no_grad():
        q.mode = "simulate"
        ys = q(x)
        q.mode = "integer"
        yi = q(x)
    torch.testing.assert_close(yi, ys, rtol=1e-4, atol=1e-5)
    codes, zp = q.quantize_input_u8(x)
    assert torch.equal(codes.int() - zp, q.quantize_input(x).int() - int(q.a_zero_point))


def test_smoothing_an_outlier_channel_lowers_the_quantized_error():
    torch.manual_seed(2)
    m = nn.Linear(16, 8)
    x = _input(m)
    errors = {}
    for alpha in (None, 0.8):
        cfg = LayerQuantConfig(WeightQuant(bits=8), ActQuant(smoothing=alpha))
        q = QuantizedLayer(m, cfg)
        if alpha is not None:
            amax = x.abs().reshape(-1, 16).amax(0)
            wmax = m.weight.detach().abs().amax(0)
            q.set_input_smoothing(amax.pow(alpha) / wmax.pow(1 - alpha))
        wmax = q.weight.detach().abs().amax(1)
        q.set_weight_qparams(*qparams_from_range(-wmax, wmax, *q.w_qrange, True))
        xs = q.smooth_input(x)
        q.set_act_qparams(*qparams_from_range(xs.min(), xs.max(), *q.a_qrange, False))
        with torch.no_grad():
            errors[alpha] = float((q(x) - m(x)).pow(2).mean())
    assert errors[0.8] < 0.25 * errors[None]


def test_scales_need_a_smoothing_config_and_positive_values():
    plain = QuantizedLayer(nn.Linear(4, 2), LayerQuantConfig())
    assert plain.input_smoothing is None
    with pytest.raises(UserInputError, match="smoothing"):
        plain.set_input_smoothing(torch.ones(4))
    q = QuantizedLayer(nn.Linear(4, 2), LayerQuantConfig(activation=ActQuant(smoothing=0.5)))
    with pytest.raises(ValueError, match="positive"):
        q.set_input_smoothing(torch.tensor([1.0, 0.0, 1.0, 1.0]))


def test_setting_scales_twice_keeps_the_float_product():
    m = nn.Linear(6, 3)
    q = _smoothed(m, torch.full((6,), 2.0))
    q.set_input_smoothing(torch.linspace(0.5, 3.0, 6))
    q.mode = "float"
    x = torch.randn(4, 6)
    with torch.no_grad():
        torch.testing.assert_close(q(x), m(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, True, "0.5", "Auto"])
def test_config_rejects_a_bad_alpha(alpha):
    with pytest.raises(UserInputError, match="alpha"):
        ActQuant(smoothing=alpha)


def test_config_takes_auto_and_round_trips():
    from quantune.config import QuantConfig

    config = QuantConfig(LayerQuantConfig(activation=ActQuant(smoothing="auto")))
    assert QuantConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize("layout", ["linear", "contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_fused_divide_and_quantize_equals_dividing_first(layout, compiled, monkeypatch):
    from quantune.input_smoothing import divide_input_channels
    from quantune.kernels.quantize_input import quantize_divided_to_uint8
    from quantune.quantizer import quantize

    # tests/conftest.py turns compilation off for speed; the slow case is about the compiled path.
    monkeypatch.setattr("quantune.kernels.quantize_input._disabled", not compiled)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 16, 40, 40, generator=gen) * 3
    kind, dim = "conv2d", 1
    if layout == "linear":
        x, kind, dim = x.reshape(4, 1600, 16), "linear", -1
    elif layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = x.transpose(2, 3)
    divisor = torch.rand(16, generator=gen) * 3 + 0.1
    scale = torch.tensor(0.02)
    q = quantize_divided_to_uint8(x, divisor, dim, scale, 117, 0, 255)
    expected = quantize(divide_input_channels(x, divisor, kind), scale, torch.tensor(117), 0, 255).to(torch.uint8)
    assert torch.equal(q, expected)
    if layout == "channels_last":
        assert q.is_contiguous(memory_format=torch.channels_last)
