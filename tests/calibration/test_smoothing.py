"""SmoothQuant end to end: scales, smoothed statistics, quantization, layer-wise calibration."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantune.calibration.smoothing import smoothing_scales
from quantune.config import (
    ActQuant,
    CalibrationProcedure,
    LayerQuantConfig,
    QuantConfig,
    WeightQuant,
)
from quantune.prepare import prepare


class OutlierMLP(nn.Module):
    """Linear -> a few outlier channels (as after a transformer's LayerNorm) -> Linear -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 8)
        gain = torch.ones(32)
        gain[:3] = torch.tensor([60.0, -45.0, 30.0])
        self.register_buffer("gain", gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(self.fc1(x) * self.gain)))


def _data() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(8, 5, 16, generator=gen) for _ in range(4)]


def _config(alpha: float | None, w_bits: int = 8, **procedure) -> QuantConfig:
    layer = LayerQuantConfig(WeightQuant(bits=w_bits), ActQuant(smoothing=alpha))
    return QuantConfig(layer, procedure=CalibrationProcedure(**procedure))


def _error(q, model, data) -> float:
    with torch.no_grad():
        return float(sum((q(x) - model(x)).pow(2).mean() for x in data))


def test_alpha_one_equalizes_activations_and_zero_equalizes_weights():
    gen = torch.Generator().manual_seed(0)
    amax = torch.rand(6, generator=gen) * 10 + 0.1
    w = torch.randn(4, 6, generator=gen)
    s1 = smoothing_scales(amax, w, 1.0)
    torch.testing.assert_close(amax / s1, torch.ones(6))
    s0 = smoothing_scales(amax, w, 0.0)
    torch.testing.assert_close((w * s0).abs().amax(0), torch.ones(6))
    s_half = smoothing_scales(amax, w, 0.5)  # both sides end with the same maximum
    torch.testing.assert_close(amax / s_half, (w * s_half).abs().amax(0))


def test_dead_channels_keep_scale_one():
    w = torch.randn(3, 4)
    w[:, 2] = 0.0
    s = smoothing_scales(torch.tensor([2.0, 0.0, 3.0, 1.0]), w, 0.5)
    assert float(s[1]) == 1.0 and float(s[2]) == 1.0


def test_smoothing_lowers_the_error_of_a_model_with_outlier_channels():
    model, data = OutlierMLP().eval(), _data()
    prepared = prepare(model, data)
    plain = prepared.quantize(_config(None), "simulate")
    smooth = prepared.quantize(_config(0.8), "simulate")
    assert _error(smooth, model, data) < 0.3 * _error(plain, model, data)
    # The smoothed quantizer input of fc2 has a far narrower range than the raw one.
    scales, hists = prepared.smoothing(0.8)
    assert hists["fc2"].max - hists["fc2"].min < 0.2 * (prepared.stats()["fc2"].max - prepared.stats()["fc2"].min)
    torch.testing.assert_close(smooth.quantized_layers()["fc2"].input_smoothing, scales["fc2"])


def test_smoothed_statistics_are_collected_once_per_alpha():
    model, data = OutlierMLP().eval(), _data()
    prepared = prepare(model, data)
    calls = []
    collect = prepared._collect
    prepared._collect = lambda *a, **k: calls.append(k.get("input_scales") is not None) or collect(*a, **k)
    for alpha in (0.5, 0.5, 0.8):
        prepared.quantize(_config(alpha), "simulate")
    assert calls == [False, True, True]


def test_integer_model_matches_simulation_with_smoothing():
    model, data = OutlierMLP().eval(), _data()
    prepared = prepare(model, data)
    sim = prepared.quantize(_config(0.5, w_bits=7), "simulate")
    integer = prepared.quantize(_config(0.5, w_bits=7), "integer")
    with torch.no_grad():
        torch.testing.assert_close(integer(data[0]), sim(data[0]), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("procedure", [{"adaquant": True, "adaquant_iters": 30}, {"adaround": True, "adaround_iters": 60},
                                       {"gptq": True}, {"bias_correction": True}])
def test_calibration_steps_work_on_smoothed_layers(procedure):
    model, data = OutlierMLP().eval(), _data()
    prepared = prepare(model, data)
    nearest = prepared.quantize(_config(0.8, w_bits=4), "simulate")
    tuned = prepared.quantize(_config(0.8, w_bits=4, **procedure), "simulate")
    assert _error(tuned, model, data) < _error(nearest, model, data)
    step = next((k for k in ("adaquant", "adaround") if procedure.get(k)), None)
    if step is not None:
        # The layer-wise fit sees the smoothed input: at W8A8 its starting error on fc2
        # (after the outlier channels) is the smoothed layer's, below the unsmoothed one's.
        # Fed the raw input, the smoothed weight would give a product ~100x off.
        smoothed_fc2, plain_fc2 = (prepared.quantize(_config(alpha, **procedure), "simulate")
                                   .calibration_log[step]["layers"][1] for alpha in (0.8, None))
        assert smoothed_fc2["name"] == "fc2"
        assert smoothed_fc2["mse_before"] < 0.5 * plain_fc2["mse_before"]


def test_search_dimension_sets_every_quantized_layers_alpha():
    from quantune.tune_space import DEFAULT_DIMENSIONS, describe_point, point_to_config, ptq_space

    assert None in DEFAULT_DIMENSIONS["a_smoothing"] and 0.8 in DEFAULT_DIMENSIONS["a_smoothing"]
    point = {"w_bits": 4, "a_method": "percentile:99.99", "a_smoothing": 0.5}
    config = point_to_config(point, ["a", "b", "c"])
    assert {config.for_layer(n).activation.smoothing for n in "abc"} == {0.5}  # edges kept at 8 bits too
    assert config.for_layer("a").weight.bits == 8 and config.for_layer("b").activation.percentile == 99.99
    assert "sq0.5" in describe_point(point) and "sq" not in describe_point({"w_bits": 4})
    assert "sqauto" in describe_point({"a_smoothing": "auto"})
    assert point_to_config({"w_bits": 4}, ["a", "b"]).default.activation.smoothing is None
    assert len(ptq_space({"a_smoothing": [None, 0.5, 0.8]}).dimensions) == 1


def test_default_space_searches_smoothing_only_on_linear_heavy_models():
    from quantune.capture import LayerInfo
    from quantune.tune_space import default_dimensions, ptq_space

    def info(kind: str, macs: int) -> LayerInfo:
        return LayerInfo("x", kind, 4, 4, (), 1, 16, macs, (4,), (4,), False)

    transformer = [info("linear", 900), info("conv2d", 100)]
    cnn = [info("conv2d", 900), info("linear", 100)]
    assert default_dimensions(transformer)["a_smoothing"] == (None, 0.8, "auto")
    assert default_dimensions(cnn)["a_smoothing"] == (None,)
    fixed = {d.name for d in ptq_space(None, defaults=default_dimensions(cnn)).dimensions if len(d.values) == 1}
    assert "a_smoothing" in fixed
    searched = {d.name for d in ptq_space(None, defaults=default_dimensions(transformer)).dimensions}
    assert "a_smoothing" in searched


def test_auto_scores_each_layers_candidates_by_measured_error():
    from quantune.calibration.smoothing import AUTO_ALPHAS, layer_inputs

    model, data = OutlierMLP().eval(), _data()
    prepared = prepare(model, data)
    cfg = _config("auto").default
    for name in ("fc1", "fc2", "fc3"):
        x = layer_inputs(prepared, name, "linear", None, 0)
        layer = model.get_submodule(name)
        errors = {}
        for alpha in (None, *AUTO_ALPHAS):
            cand = prepared.quantized_layer(name, _config(alpha).default, alpha)
            cand.mode = "simulate"
            with torch.no_grad():
                errors[alpha] = float((cand(x) - layer(x)).pow(2).mean())
        assert errors[prepared.smoothing_alpha(name, cfg)] == min(errors.values())
    assert prepared.smoothing_alpha("fc2", cfg) is not None  # the layer after the outlier channels smooths


def _auto_model_beats_every_uniform_choice(model: nn.Module, data: list[torch.Tensor], w_bits: int):
    from quantune.calibration.smoothing import AUTO_ALPHAS

    prepared = prepare(model, data)
    auto = prepared.quantize(_config("auto", w_bits=w_bits), "simulate")
    uniform = {alpha: _error(prepared.quantize(_config(alpha, w_bits=w_bits), "simulate"), model, data)
               for alpha in (None, *AUTO_ALPHAS)}
    # The whole-model check runs on these same calibration batches.
    assert _error(auto, model, data) <= min(uniform.values()) * (1 + 1e-6)
    return prepared, auto


def test_auto_model_is_closer_to_float_than_any_single_alpha():
    model, data = OutlierMLP().eval(), _data()
    prepared, auto = _auto_model_beats_every_uniform_choice(model, data, 8)
    assert set(auto.smoothing_alphas) == {"fc1", "fc2", "fc3"}
    assert auto.smoothing_alphas["fc2"] is not None


def test_auto_never_loses_to_a_uniform_choice_at_low_weight_bits():
    # No outlier channels and 3-bit weights: what smoothing moves costs the weights.
    torch.manual_seed(5)
    gen = torch.Generator().manual_seed(5)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    data = [torch.randn(32, 16, generator=gen) for _ in range(3)]
    _auto_model_beats_every_uniform_choice(model, data, 3)


def test_auto_falls_back_to_a_uniform_choice_when_the_per_layer_one_loses(monkeypatch):
    from quantune.calibration import smoothing

    model, data = OutlierMLP().eval(), _data()
    prepared = prepare(model, data)
    # A per-layer proxy that picks the worst candidate: the whole-model check must overrule it.
    monkeypatch.setattr(smoothing, "choose_alpha", lambda *a: 0.0)
    q = prepared.quantize(_config("auto"), "simulate")
    assert set(q.smoothing_alphas.values()) != {0.0}
    assert len(set(q.smoothing_alphas.values())) == 1


def test_tune_reports_each_layers_alpha():
    from quantune.tune import tune

    model, data = OutlierMLP().eval(), _data()
    result = tune(model, data, data, metric="mse", dimensions={"a_smoothing": ["auto"]}, strategy="grid",
                  trials=1, show_progress=False, measure_latency=False)
    layers = {row["name"]: row for row in result.report()["layers"]}
    assert result.point["a_smoothing"] == "auto" and "sqauto" in result.label
    for name, alpha in result.model.smoothing_alphas.items():
        assert layers[name]["smoothing"] == ("none" if alpha is None else alpha)
    assert set(result.model.smoothing_alphas) == {"fc1", "fc2", "fc3"}
