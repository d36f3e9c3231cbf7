"""Synthetic calibration inputs distilled from BatchNorm statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantune.calibration.synthetic import ChannelTarget, _mismatch, batchnorm_targets, synthesize
from quantune.config import CalibrationProcedure
from quantune.errors import UserInputError
from quantune.prepare import prepare


def test_folded_targets_measure_what_the_batchnorm_inputs_measure(smooth_cnn):
    """The mismatch on a folded layer's output equals the mismatch on the unfolded
    BatchNorm's input against its running statistics (BatchNorm is affine per channel)."""
    model, data = smooth_cnn
    prepared = prepare(model, data)
    targets = {t.module: t for t in batchnorm_targets(prepared.float_model, prepared.bn_pairs, prepared.bn_modules)}
    assert set(targets) == {"0", "3"}
    x = torch.randn(6, 3, 20, 20) * 2.0 + 0.5  # off-distribution, so the mismatch is not ~0
    with torch.no_grad():
        folded_out = prepared.float_model[0](x)
        raw_out = model[0](x)
    bn = model[1]
    direct = ChannelTarget("1", True, bn.running_mean, bn.running_var.sqrt())
    assert float(_mismatch(folded_out, targets["0"])) == pytest.approx(float(_mismatch(raw_out, direct)), rel=1e-3)
    assert float(_mismatch(folded_out, targets["0"])) > 0.1


def test_synthesis_matches_the_statistics_within_the_input_range(smooth_cnn):
    model, data = smooth_cnn
    prepared = prepare(model, data)
    targets = batchnorm_targets(prepared.float_model, prepared.bn_pairs, prepared.bn_modules)
    batches, report = synthesize(prepared.float_model, targets, data[0], 10, iters=60, batch_size=4, seed=0)
    assert [b.shape for b in batches] == [(4, 3, 20, 20), (4, 3, 20, 20), (2, 3, 20, 20)]
    assert prepared.float_model[2].inplace is True  # switched off for the input gradient, then restored
    assert report.loss_end < 0.5 * report.loss_start
    x = torch.cat(batches)
    lo = data[0].amin((0, 2, 3)).reshape(1, 3, 1, 1)
    hi = data[0].amax((0, 2, 3)).reshape(1, 3, 1, 1)
    assert bool((x >= lo - 1e-6).all()) and bool((x <= hi + 1e-6).all())
    again, _ = synthesize(prepared.float_model, targets, data[0], 10, iters=60, batch_size=4, seed=0)
    assert torch.equal(torch.cat(again), x)
    other, _ = synthesize(prepared.float_model, targets, data[0], 10, iters=60, batch_size=4, seed=1)
    assert not torch.equal(torch.cat(other), x)


def test_models_without_batchnorm_or_float_inputs_are_refused():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(UserInputError, match="no BatchNorm"):
        synthesize(model, [], torch.randn(2, 4), 2, iters=1)
    target = ChannelTarget("0", False, torch.zeros(4), torch.ones(4))
    with pytest.raises(UserInputError, match="one float tensor"):
        synthesize(model, [target], torch.zeros(2, 4, dtype=torch.long), 2, iters=1)


def test_procedure_adds_synthetic_samples_to_layerwise_training_only(smooth_cnn, quantize_w3a8):
    model, data = smooth_cnn
    options = {"adaround": True, "adaround_iters": 5, "layerwise_holdout": 0.0}
    prepared, plain = quantize_w3a8(model, data, **options)
    _, mixed = quantize_w3a8(model, data, synthetic_samples=16, synthetic_iters=5, **options)
    log = mixed.calibration_log
    assert log["synthetic"]["samples"] == 16 and log["synthetic"]["iters"] == 5
    assert "synthetic" not in plain.calibration_log
    rows = {r["name"]: r["rows"] for r in plain.calibration_log["adaround"]["layers"]}
    mixed_rows = {r["name"]: r["rows"] for r in log["adaround"]["layers"]}
    # 32 real samples + 16 synthetic ones: every layer trained on 1.5x the rows.
    assert all(mixed_rows[n] == rows[n] * 3 // 2 for n in rows)
    # Activation ranges come from the real data alone: the same scales in both models.
    for name, layer in plain.quantized_layers().items():
        assert torch.equal(layer.a_scale, mixed.quantized_layers()[name].a_scale)


def test_synthetic_options_are_validated():
    with pytest.raises(UserInputError, match="synthetic_samples"):
        CalibrationProcedure(synthetic_samples=-1)
    with pytest.raises(UserInputError, match="synthetic_iters"):
        CalibrationProcedure(synthetic_iters=0)


def test_search_dimension_sets_the_procedure_and_is_opt_in():
    from quantune.tune_space import DEFAULT_DIMENSIONS, describe_point, point_to_config, ptq_space

    point = {"w_bits": 4, "adaround": True, "synthetic_samples": 32}
    assert point_to_config(point, ["a", "b", "c"]).procedure.synthetic_samples == 32
    assert "+syn32" in describe_point(point)
    assert point_to_config({"w_bits": 4}, ["a", "b"]).procedure.synthetic_samples == 0
    assert DEFAULT_DIMENSIONS["synthetic_samples"] == (0,)  # the default space distills nothing
    assert ptq_space({"synthetic_samples": (0, 32)}).size == 2


def test_in_place_activations_do_not_break_the_input_gradient():
    """The bundled example's ReLU(inplace=True) layers: distillation runs and restores them."""
    from quantune.example import load_example

    model, calib, _ = load_example()
    prepared = prepare(model, calib)
    targets = batchnorm_targets(prepared.float_model, prepared.bn_pairs, prepared.bn_modules)
    batches, report = synthesize(prepared.float_model, targets, calib[0], 4, iters=3, seed=0)
    assert len(targets) == 4 and batches[0].shape[0] == 4 and report.iters == 3
    assert all(m.inplace for m in prepared.float_model.modules() if isinstance(m, nn.ReLU))
