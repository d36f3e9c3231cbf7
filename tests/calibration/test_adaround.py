"""AdaRound: learned rounding stays on the grid, lowers the layer error, is deterministic,
and is kept only if held-out calibration samples confirm it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantune.calibration.adaquant import adaquant_layer
from quantune.calibration.adaround import adaround_layer
from quantune.calibration.layer_batches import split_rows
from quantune.calibration.layer_io import (
    LayerSamples,
    RowSelector,
    as_rows,
    capture_inputs,
    collect_layer_samples,
    row_sample_ids,
)
from quantune.config import (
    ActQuant,
    CalibrationProcedure,
    LayerQuantConfig,
    QuantConfig,
    WeightQuant,
)
from quantune.errors import UserInputError
from quantune.modules import QuantizedLayer
from quantune.prepare import prepare

W3A8 = LayerQuantConfig(WeightQuant(bits=3), ActQuant(bits=8))


def _cfg(layer: LayerQuantConfig = W3A8, **proc) -> QuantConfig:
    return QuantConfig(default=layer, procedure=CalibrationProcedure(**proc))


def _out_mse(q, model, x) -> float:
    with torch.no_grad():
        return float(F.mse_loss(q(x), model(x)))


def _layer_samples(p, q, name, float_target=True):
    li = next(i for i in p.layers if i.name == name)
    return collect_layer_samples(p.float_model, q.model, name, li.kind, p.calibration_data(None, 0),
                                 RowSelector(1.0, 0, 0), float_target)


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
    for share in (-0.1, 0.6):
        with pytest.raises(UserInputError, match="layerwise_holdout"):
            CalibrationProcedure(layerwise_holdout=share)


def _trap(seed: int, trapped: bool = True) -> tuple[QuantizedLayer, LayerSamples]:
    """A Linear layer whose held-out sentences (``trapped``) want nearest rounding: their
    targets are its current output, while the other sentences want the float output, so
    what is learned on the others can only raise the held-out error."""
    torch.manual_seed(0)
    layer = QuantizedLayer(nn.Linear(32, 16), LayerQuantConfig(WeightQuant(bits=3), None))
    layer.set_weight_qparams(layer.weight.detach().abs().amax(dim=1) / 3, torch.zeros(16, dtype=torch.int32))
    # Correlated input features: there, rounding errors of different weights can cancel.
    x = torch.randn(64, 8, 4) @ torch.randn(4, 32) + 0.1 * torch.randn(64, 8, 32)
    rows = as_rows(x, "linear")
    samples = LayerSamples(rows, torch.zeros(len(rows), 16), row_sample_ids(x, "linear", 0))
    held = split_rows(layer, samples, 0.25, torch.Generator().manual_seed(seed)).check
    with torch.no_grad():
        samples.y[:] = F.linear(rows, layer.weight, layer.bias)
        if trapped:
            samples.y[held] = F.linear(rows[held], layer.fake_quant_weight(), layer.bias)
    return layer, samples


def _adaround(layer, samples, holdout):
    return adaround_layer("fc", layer, samples, iters=200, lr=1e-2, reg=0.01, batch_size=8, seed=5, holdout=holdout)


def _adaquant(layer, samples, holdout):
    return adaquant_layer("fc", layer, samples, iters=200, lr=1e-3, batch_size=8, seed=5, holdout=holdout)


@pytest.mark.parametrize("method", [_adaround, _adaquant])
def test_layerwise_result_is_kept_only_if_held_out_samples_agree(method):
    layer, samples = _trap(seed=5)
    w = layer.weight.detach().clone()
    res = method(layer, samples, 0.25)
    assert res.mse_before == 0.0 and not res.kept
    torch.testing.assert_close(layer.weight.detach(), w)  # untouched
    # Where the held-out sentences want what the others want, the result is kept.
    layer, samples = _trap(seed=5, trapped=False)
    res = method(layer, samples, 0.25)
    assert res.kept and res.mse_after < res.mse_before


def test_checked_on_its_training_rows_the_trapped_result_would_be_kept():
    layer, samples = _trap(seed=5)
    start = layer.fake_quant_weight().detach()
    res = _adaquant(layer, samples, 0.0)
    assert res.kept and res.mse_after < res.mse_before
    assert not torch.equal(layer.fake_quant_weight().detach(), start)


def test_targets_are_the_float_models_output_or_the_float_layer_on_the_cached_input(cnn):
    p = prepare(*cnn)
    q = p.quantize(_cfg(), "simulate")
    name = "3"
    own, full = _layer_samples(p, q, name, float_target=False), _layer_samples(p, q, name)
    batches = p.calibration_data(None, 0)
    float_layer = p.float_model.get_submodule(name)
    with torch.no_grad():
        torch.testing.assert_close(own.y, float_layer(own.x))  # reproduce the float layer on its own input
        torch.testing.assert_close(full.x, own.x)
        float_inputs = torch.cat([x for _, x, _ in capture_inputs(p.float_model, name, batches, "conv2d")])
        torch.testing.assert_close(full.y, float_layer(float_inputs))  # the float model's own output
    assert not torch.allclose(own.y, full.y)  # the quantized layers before it changed its input
