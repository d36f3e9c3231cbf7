"""AdaRound: learned rounding stays on the grid, lowers the layer error, is deterministic."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from quantune.calibration.adaround import adaround_layer
from quantune.calibration.layer_io import RowSelector, collect_layer_samples
from quantune.config import (
    ActQuant,
    CalibrationProcedure,
    LayerQuantConfig,
    QuantConfig,
    WeightQuant,
)
from quantune.errors import UserInputError
from quantune.prepare import prepare

W3A8 = LayerQuantConfig(WeightQuant(bits=3), ActQuant(bits=8))


def _cfg(layer: LayerQuantConfig = W3A8, **proc) -> QuantConfig:
    return QuantConfig(default=layer, procedure=CalibrationProcedure(**proc))


def _out_mse(q, model, x) -> float:
    with torch.no_grad():
        return float(F.mse_loss(q(x), model(x)))


def _layer_samples(p, q, name):
    li = next(i for i in p.layers if i.name == name)
    return collect_layer_samples(p.float_model, q.model, name, li.kind, p.calibration_data(None, 0), RowSelector(1.0, 0, 0))


@pytest.mark.parametrize(("granularity", "symmetric"), [("per_channel", True), ("per_tensor", False)])
def test_adaround_moves_weights_to_neighbouring_grid_points_and_lowers_the_error(cnn, granularity, symmetric):
    model, data = cnn
    p = prepare(model, data)
    weights = WeightQuant(bits=3, granularity=granularity, symmetric=symmetric)
    q = p.quantize(_cfg(LayerQuantConfig(weights, ActQuant(bits=8))), "simulate")
    name = "3"
    layer = q.quantized_layers()[name]
    samples = _layer_samples(p, q, name)
    w_float = layer.weight.detach().clone()
    res = adaround_layer(name, layer, samples, iters=300, lr=1e-2, reg=0.01, batch_size=32, seed=0)
    assert res.kept and res.mse_after < 0.9 * res.mse_before
    assert 0.0 < res.flipped < 0.5
    s = layer.w_scale.reshape(-1, 1, 1, 1) if granularity == "per_channel" else layer.w_scale
    zero = layer.w_zero_point.reshape(s.shape).float()
    codes = layer.weight / s + zero
    # On the grid (so conversion to integers keeps the learned codes) ...
    assert torch.allclose(codes, torch.round(codes), atol=1e-4)
    lo, hi = layer.w_qrange
    float_codes = w_float / s + zero
    inside = (float_codes > lo) & (float_codes < hi)
    # ... and each weight inside the range on one of its two neighbours.
    assert torch.all(torch.round(codes)[inside] >= torch.floor(float_codes)[inside])
    assert torch.all(torch.round(codes)[inside] <= torch.ceil(float_codes)[inside])
    with torch.no_grad():
        assert float(F.mse_loss(layer(samples.x), samples.y)) < res.mse_before


def test_adaround_reverts_when_it_cannot_help(cnn):
    model, data = cnn
    p = prepare(model, data)
    q = p.quantize(_cfg(), "simulate")
    layer = q.quantized_layers()["3"]
    before = layer.weight.detach().clone()
    res = adaround_layer("3", layer, _layer_samples(p, q, "3"), iters=0, lr=1e-2, reg=0.01, batch_size=32, seed=0)
    # No step: the hard rounding of the initial logits is nearest rounding, not better.
    assert not res.kept and res.mse_after == res.mse_before and res.flipped == 0.0
    assert torch.equal(layer.weight, before)


def test_adaround_in_the_pipeline_is_deterministic_and_beats_nearest(cnn):
    model, data = cnn
    p = prepare(model, data)
    x = torch.randn(32, 3, 12, 12)
    plain = p.quantize(_cfg(), "simulate")
    runs = [p.quantize(_cfg(adaround=True, adaround_iters=150, seed=3), "simulate") for _ in range(2)]
    assert _out_mse(runs[0], model, x) < _out_mse(plain, model, x)
    for a, b in zip(runs[0].state_dict().values(), runs[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    log = runs[0].calibration_log["adaround"]["layers"]
    assert [r["name"] for r in log] == ["0", "3", "6", "11"]
    integer = p.quantize(_cfg(adaround=True, adaround_iters=150, seed=3), "integer")
    with torch.no_grad():
        # The integer model computes the learned codes: it matches the simulation.
        assert torch.allclose(integer(x), runs[0](x), atol=1e-3, rtol=1e-3)


def test_adaround_time_budget_still_anneals(cnn):
    model, data = cnn
    p = prepare(model, data)
    q = p.quantize(_cfg(adaround=True, adaround_iters=100_000, adaquant_time_budget_s=1.0), "simulate")
    log = q.calibration_log["adaround"]
    assert log["seconds"] < 6.0
    assert all(r["iters"] < 100_000 for r in log["layers"])
    x = torch.randn(32, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    # Cut short by the budget, the schedule still annealed: the roundings help.
    assert _out_mse(q, model, x) < _out_mse(p.quantize(_cfg(), "simulate"), model, x)


def test_adaround_steps_and_options():
    proc = CalibrationProcedure.from_steps("gptq+adaround+biascorr")
    assert proc.adaround and proc.gptq and proc.bias_correction and not proc.adaquant
    assert proc.steps == "gptq+adaround+biascorr"
    with pytest.raises(UserInputError, match="adaround_iters"):
        CalibrationProcedure(adaround_iters=-1)
    with pytest.raises(UserInputError, match="adaround_reg"):
        CalibrationProcedure(adaround_reg=-0.5)
