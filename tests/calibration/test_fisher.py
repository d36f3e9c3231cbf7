"""Fisher-weighted layer-wise calibration: gradients at a layer's output, weights, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantune.calibration.adaround import output_error
from quantune.calibration.fisher import (
    classification_logits,
    fisher_weights,
    output_gradients,
    pseudo_label_loss,
)
from quantune.calibration.layer_batches import LayerBatches, weighted_mse
from quantune.calibration.layer_io import RowSelector, collect_layer_samples
from quantune.config import CalibrationProcedure, LayerQuantConfig
from quantune.errors import UserInputError
from quantune.modules import QuantizedLayer


def _half_blind_cnn() -> nn.Module:
    """Conv -> ReLU -> pool -> Linear whose weights on conv channels 4..7 are zero."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 5))
    with torch.no_grad():
        model[4].weight[:, 4:] = 0.0
    return model.eval()


def test_output_gradients_match_autograd_and_vanish_where_the_prediction_ignores_the_output():
    model = _half_blind_cnn()
    batches = [torch.randn(4, 3, 6, 6), torch.randn(3, 3, 6, 6)]
    got = dict(output_gradients(model, "0", "conv2d", batches))
    assert sorted(got) == [0, 1]
    for i, x in enumerate(batches):
        out = model[0](x).detach().requires_grad_(True)
        loss = pseudo_label_loss(model[1:](out))
        (want,) = torch.autograd.grad(loss, out)
        torch.testing.assert_close(got[i], want)
        assert got[i].shape == (len(x), 8, 6, 6)
        assert got[i][:, 4:].abs().max() == 0 and got[i][:, :4].abs().max() > 0
    # The model's own parameters are untouched and keep no gradient.
    assert all(p.grad is None for p in model.parameters())


def test_fisher_weights_have_mean_one_and_fall_back_to_ones():
    g = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    w = fisher_weights(g)
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.0], [4.0, 1.0]]) / 1.5)
    assert float(w.mean()) == pytest.approx(1.0)
    assert torch.equal(fisher_weights(torch.zeros(3, 2)), torch.ones(3, 2))


def test_weighted_errors_ignore_zero_weight_elements_and_equal_the_plain_ones_with_unit_weights():
    out, target = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    ones = torch.ones_like(out)
    assert float(weighted_mse(out, target, ones)) == pytest.approx(float(weighted_mse(out, target)))
    assert float(output_error(out, target, ones)) == pytest.approx(float(output_error(out, target)))
    mask = torch.zeros_like(out)
    mask[:, 0] = 1.0
    moved = target.clone()
    moved[:, 1:] += 100.0  # errors only where the weight is zero
    assert float(output_error(out, moved, mask)) == pytest.approx(float(output_error(out[:, :1], target[:, :1])))


def test_layer_samples_carry_weights_drawn_with_their_windows():
    model = _half_blind_cnn()
    data = [torch.randn(4, 3, 20, 20) for _ in range(2)]
    samples = collect_layer_samples(model, model, "0", "conv2d", data, RowSelector(1.0, 0, 0), fisher=True)
    assert samples is not None and samples.weight is not None
    assert samples.weight.shape == samples.y.shape
    assert float(samples.weight.mean()) == pytest.approx(1.0, rel=1e-5)
    assert samples.weight[:, 4:].max() == 0
    plain = collect_layer_samples(model, model, "0", "conv2d", data, RowSelector(1.0, 0, 0))
    assert plain is not None and plain.weight is None
    layer = QuantizedLayer(model[0], LayerQuantConfig())
    batches = LayerBatches(layer, samples.x, samples.y, 3, torch.Generator().manual_seed(0), window=8,
                           weight=samples.weight * 0 + samples.y)  # weights equal to the targets: traceable
    x, y, w = batches.draw_weighted()
    assert w is not None and torch.equal(w, y) and y.shape == (3, 8, 8, 8)


def test_gradients_of_a_padded_text_batch_keep_the_real_tokens_only():
    from tests.core.test_token_mask import TinyEncoder, _batches

    model = TinyEncoder().eval()
    batches = _batches()
    selector = RowSelector(1.0, 0, 0)
    samples = collect_layer_samples(model, model, "fc", "linear", batches, selector, fisher=True)
    assert samples is not None and samples.weight is not None
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    assert samples.weight.shape == samples.y.shape == (real, 4)
    assert float(samples.weight.min()) >= 0 and float(samples.weight.max()) > 0


def test_non_classifier_outputs_get_a_clear_error():
    with pytest.raises(UserInputError, match="layerwise_loss='mse'"):
        classification_logits(torch.randn(2, 3, 4))
    with pytest.raises(UserInputError, match="logits"):
        classification_logits({"embedding": torch.randn(2, 3)})
    logits = torch.randn(2, 3)
    assert classification_logits(type("Out", (), {"logits": logits})()) is logits


def test_procedure_validates_the_loss():
    with pytest.raises(UserInputError, match="layerwise_loss"):
        CalibrationProcedure(layerwise_loss="l1")
    with pytest.raises(UserInputError, match="block"):
        CalibrationProcedure.from_steps("brecq", layerwise_loss="fisher")
    assert CalibrationProcedure.from_steps("adaround", layerwise_loss="fisher").layerwise_loss == "fisher"


def test_fisher_adaround_lowers_the_prediction_loss_below_nearest_rounding(smooth_cnn, quantize_w3a8):
    model, data = smooth_cnn
    x = torch.cat(data)
    with torch.no_grad():
        ref = model(x).log_softmax(1)

    def kl(q) -> float:
        with torch.no_grad():
            return float(nn.functional.kl_div(q(x).log_softmax(1), ref, log_target=True, reduction="batchmean"))

    _, plain = quantize_w3a8(model, data)
    prepared, tuned = quantize_w3a8(model, data, adaround=True, adaround_iters=200, layerwise_loss="fisher",
                                    layerwise_holdout=0.0)
    assert kl(tuned) < kl(plain)


def test_search_dimension_sets_the_loss_and_is_opt_in():
    from quantune.tune_space import DEFAULT_DIMENSIONS, describe_point, point_to_config

    point = {"w_bits": 4, "adaround": True, "layerwise_loss": "fisher"}
    assert point_to_config(point, ["a", "b", "c"]).procedure.layerwise_loss == "fisher"
    assert "+fisher" in describe_point(point)
    assert "+fisher" not in describe_point({"w_bits": 4, "layerwise_loss": "fisher"})  # no layer-wise step
    blocks = {"w_bits": 4, "adaround": "block", "layerwise_loss": "fisher"}
    assert point_to_config(blocks, ["a", "b", "c"]).procedure.layerwise_loss == "mse"
    assert "+fisher" not in describe_point(blocks)  # the label says what runs
    assert point_to_config({"w_bits": 4}, ["a", "b"]).procedure.layerwise_loss == "mse"
    assert DEFAULT_DIMENSIONS["layerwise_loss"] == ("mse",)
