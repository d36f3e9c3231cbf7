"""AdaQuant, bias correction and BatchNorm re-estimation on a small CNN."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from quantune.calibration.adaquant import adaquant_layer
from quantune.calibration.layer_io import RowSelector, collect_layer_samples
from quantune.config import (
    ActQuant,
    CalibrationProcedure,
    LayerQuantConfig,
    QuantConfig,
    WeightQuant,
)
from quantune.prepare import prepare

W4A8 = LayerQuantConfig(WeightQuant(bits=4), ActQuant(bits=8))


def _cfg(**proc) -> QuantConfig:
    return QuantConfig(default=W4A8, procedure=CalibrationProcedure(**proc))


def _out_mse(q, model, x) -> float:
    with torch.no_grad():
        return float(F.mse_loss(q(x), model(x)))


def test_adaquant_reduces_layer_error_and_is_deterministic(cnn):
    model, data = cnn
    p = prepare(model, data)
    plain = p.quantize(_cfg(), "simulate")
    name = "3"
    li = next(i for i in p.layers if i.name == name)
    samples = collect_layer_samples(p.float_model, plain.model, name, li.kind, data, RowSelector(1.0, 0, 0))
    layer = plain.quantized_layers()[name]
    res = adaquant_layer(name, layer, samples, iters=60, lr=1e-3, batch_size=32, seed=0)
    assert res.kept and res.mse_after < 0.9 * res.mse_before
    with torch.no_grad():
        assert float(F.mse_loss(layer(samples.x), samples.y)) < res.mse_before

    x = torch.randn(32, 3, 12, 12)
    runs = [p.quantize(_cfg(adaquant=True, adaquant_iters=40, seed=7), "simulate") for _ in range(2)]
    assert _out_mse(runs[0], model, x) < _out_mse(plain, model, x)
    for a, b in zip(runs[0].state_dict().values(), runs[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    log = runs[0].calibration_log["adaquant"]["layers"]
    assert [r["name"] for r in log] == ["0", "3", "6", "11"]  # execution order


def test_adaquant_cache_cap_and_time_budget(cnn):
    model, data = cnn
    p = prepare(model, data)
    q = p.quantize(_cfg(adaquant=True, adaquant_iters=10_000, adaquant_time_budget_s=1.5, adaquant_cache_mb=1), "simulate")
    log = q.calibration_log["adaquant"]
    assert log["seconds"] < 6.0  # budget + one capture per layer
    # 1 MiB holds 2**20 / bytes-per-sample samples of layer "3" (75 < the 96 given);
    # each of the 6 batches rounds its share up by at most one.
    rows = {r["name"]: r["rows"] for r in log["layers"]}
    assert rows["3"] <= 2**20 // (4 * (16 * 12 * 12 + 32 * 6 * 6)) + 6 < 96
    assert _out_mse(q, model, torch.randn(8, 3, 12, 12)) < 1.0


def test_adaquant_non_sequential_and_integer_mode(cnn):
    model, data = cnn
    p = prepare(model, data)
    q = p.quantize(_cfg(adaquant=True, adaquant_iters=20, adaquant_sequential=False), "integer")
    x = torch.randn(4, 3, 12, 12)
    assert torch.isfinite(q(x)).all()


def test_bias_correction_removes_the_mean_shift(cnn):
    model, data = cnn
    p = prepare(model, data)
    cfg = QuantConfig(default=LayerQuantConfig(WeightQuant(bits=3), ActQuant(bits=8)))
    plain = p.quantize(cfg, "simulate")
    corrected = p.quantize(QuantConfig(default=cfg.default, procedure=CalibrationProcedure(bias_correction=True)), "simulate")

    def channel_means(m):
        with torch.no_grad():
            return torch.cat([m(b) for b in data]).mean(0)

    target = channel_means(model)
    shift_plain = (channel_means(plain) - target).abs().mean()
    shift_corr = (channel_means(corrected) - target).abs().mean()
    assert shift_corr < 0.05 * shift_plain
    assert set(corrected.calibration_log["bias_correction"]["shift_removed"]) == {"0", "3", "6", "11"}
    log = corrected.calibration_log["bias_correction"]
    assert log["kept"] and log["output_error_corrected"] <= log["output_error_uncorrected"]


def _harmful_bias_correction(monkeypatch) -> None:
    """Make every bias correction wreck the biases, as one dominated by outliers can."""
    from quantune.calibration import bias_correction as bc_module

    real = bc_module.bias_correction

    def wrecking(qmodel, *args, **kwargs):
        removed = real(qmodel, *args, **kwargs)
        with torch.no_grad():
            for layer in qmodel.quantized_layers().values():
                layer.bias.add_(50.0)
        return removed

    monkeypatch.setattr(bc_module, "bias_correction", wrecking)


def test_a_bias_correction_that_hurts_the_model_is_reverted(cnn, monkeypatch):
    model, data = cnn
    p = prepare(model, data)
    plain = p.quantize(_cfg(), "simulate")
    _harmful_bias_correction(monkeypatch)
    checked = p.quantize(_cfg(bias_correction=True), "simulate")
    log = checked.calibration_log["bias_correction"]
    assert not log["kept"] and log["output_error_corrected"] > log["output_error_uncorrected"]
    for name, layer in checked.quantized_layers().items():  # the nearest-rounding biases are back
        torch.testing.assert_close(layer.bias, plain.quantized_layers()[name].bias)


def test_kept_bias_correction_of_bias_less_layers_survives_the_check():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, bias=False), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4, bias=False),
    ).eval()
    data = [torch.randn(8, 3, 10, 10) + 0.5 for _ in range(4)]
    p = prepare(model, data)
    corrected = p.quantize(_cfg(bias_correction=True), "simulate")
    log = corrected.calibration_log["bias_correction"]
    assert log["kept"], log  # the check measured both and kept the corrected biases
    layers = corrected.quantized_layers()
    assert all(layer.bias is not None for layer in layers.values())
    assert any(float(layer.bias.abs().max()) > 0 for layer in layers.values())


class _Attention(torch.nn.Module):
    """MultiheadAttention uses its ``out_proj`` Linear's weights functionally: the
    module itself never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(6, 8)
        self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x)
        return self.head(self.attn(t, t, t)[0].mean(1))


def test_layers_that_never_run_stay_float_and_layerwise_steps_skip_them():
    torch.manual_seed(0)
    model = _Attention().eval()
    data = [torch.randn(4, 5, 6) for _ in range(3)]
    p = prepare(model, data)
    assert "attn.out_proj" not in p.layer_names  # it never runs: kept float, reported
    assert ("attn.out_proj", "never ran as a module on the calibration data") in p.unsupported
    for steps in ({"adaquant": True, "adaquant_iters": 5}, {"adaround": True, "adaround_iters": 5}):
        q = p.quantize(_cfg(**steps), "simulate")
        method = next(iter(steps))
        done = [r["name"] for r in q.calibration_log[method]["layers"]]
        assert "attn.out_proj" not in done and {"embed", "head"} <= set(done), done


def test_gptq_fused_bias_correction_is_checked_too(cnn):
    model, data = cnn
    p = prepare(model, data)
    gptq = p.quantize(_cfg(gptq=True), "simulate")
    fused = p.quantize(_cfg(gptq=True, bias_correction=True), "simulate")
    log = fused.calibration_log["bias_correction"]
    assert log["fused_with"] == "gptq" and "kept" in log
    if not log["kept"]:  # reverted: exactly GPTQ's model
        for name, layer in fused.quantized_layers().items():
            torch.testing.assert_close(layer.bias, gptq.quantized_layers()[name].bias)
    assert log["output_error_corrected" if log["kept"] else "output_error_uncorrected"] == min(
        log["output_error_corrected"], log["output_error_uncorrected"])


def test_bn_reestimation_tracks_the_quantized_statistics(cnn):
    model, data = cnn
    p = prepare(model, data)
    assert set(p.bn_modules) == {"1", "4", "7"}
    cfg = QuantConfig(default=LayerQuantConfig(WeightQuant(bits=3), ActQuant(bits=8)))
    plain = p.quantize(cfg, "simulate")
    tuned = p.quantize(QuantConfig(default=cfg.default, procedure=CalibrationProcedure(bn_reestimate=True)), "simulate")
    report = tuned.calibration_log["bn_reestimate"]["batchnorms"]
    assert set(report) == {"1", "4", "7"}
    for r in report.values():  # a small, sensible correction: no collapse, no blow-up
        assert 0.5 < r["std_ratio"] < 2.0 and r["mean_shift"] < 1.0
    # After re-estimation each folded BN's output is normalized again on the data:
    # the per-channel mean of the post-BN activation equals beta.
    bn = p.bn_modules["4"]
    outs = []
    h = tuned.model.get_submodule("3").register_forward_hook(lambda m, i, o: outs.append(o))
    with torch.no_grad():
        for b in data:
            tuned(b)
    h.remove()
    mean = torch.cat(outs).mean((0, 2, 3))
    assert torch.allclose(mean, bn.bias.float(), atol=2e-2)
    x = torch.randn(32, 3, 12, 12)
    assert _out_mse(tuned, model, x) < _out_mse(plain, model, x)


def test_procedure_round_trips_through_json():
    cfg = _cfg(adaquant=True, adaquant_time_budget_s=12.5, adaquant_sequential=False, bias_correction=True)
    assert QuantConfig.from_json(cfg.to_json()) == cfg


def test_bias_correction_without_tensor_outputs_skips_the_check(cnn):
    from torch import nn

    class DictOutput(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return {"scores": self.inner(x)}

    model, data = cnn
    p = prepare(DictOutput(model), data)
    q = p.quantize(_cfg(bias_correction=True), "simulate")
    log = q.calibration_log["bias_correction"]
    assert log["kept"] and log["check"].startswith("skipped")
    assert log["shift_removed"]
