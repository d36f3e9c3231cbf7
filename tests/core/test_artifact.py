from __future__ import annotations

import pytest
import torch

import quantune
from quantune.errors import UserInputError


def test_save_load_round_trip_with_factory(example, tmp_path):
    model, calib, val = example
    q = quantune.quantize(model, None, calib[:2])
    x = val[0][0]
    expected = q(x)  # the first integer forward fixes each layer's measured path
    quantune.save(q, tmp_path / "art", factory="quantune.example:build_model")
    assert not (tmp_path / "art" / "module.pt").exists()
    q2 = quantune.load(tmp_path / "art")
    assert torch.equal(expected, q2(x))
    assert q2.size_bytes() == q.size_bytes()
    assert q2.config == q.config


def test_pickled_module_needs_trust(convnet, image_batches, tmp_path):
    q = quantune.quantize(convnet, None, image_batches)
    expected = q(image_batches[0])
    quantune.save(q, tmp_path / "art")
    with pytest.raises(UserInputError, match="trust_remote_code"):
        quantune.load(tmp_path / "art")
    q2 = quantune.load(tmp_path / "art", trust_remote_code=True)
    assert torch.equal(expected, q2(image_batches[0]))


def test_corrupt_artifacts(tmp_path):
    with pytest.raises(UserInputError, match="not a quantune artifact"):
        quantune.load(tmp_path)


def test_rebuild_from_model_instance(convnet, image_batches, tmp_path):
    import copy

    fresh = copy.deepcopy(convnet)
    q = quantune.quantize(convnet, None, image_batches)
    expected = q(image_batches[0])
    quantune.save(q, tmp_path / "art", include_module=False)
    q2 = quantune.load(tmp_path / "art", model=fresh)
    assert torch.equal(expected, q2(image_batches[0]))


def test_smoothing_scales_are_saved_and_loaded(convnet, image_batches, tmp_path):
    import copy

    from quantune.config import ActQuant, LayerQuantConfig, QuantConfig

    fresh = copy.deepcopy(convnet)
    config = QuantConfig(LayerQuantConfig(activation=ActQuant(smoothing=0.5)))
    q = quantune.quantize(convnet, config, image_batches)
    scales = {n: m.input_smoothing.clone() for n, m in q.quantized_layers().items()}
    assert any(not torch.equal(s, torch.ones_like(s)) for s in scales.values())
    expected = q(image_batches[0])
    quantune.save(q, tmp_path / "art", include_module=False)
    q2 = quantune.load(tmp_path / "art", model=fresh)
    for name, m in q2.quantized_layers().items():
        assert torch.equal(m.input_smoothing, scales[name])
    assert torch.equal(expected, q2(image_batches[0]))


def test_biases_added_by_bias_correction_are_saved_and_loaded(image_batches, tmp_path):
    import copy

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(image_batches[0].shape[1], 8, 3, padding=1, bias=False), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4, bias=False),
    ).eval()
    fresh = copy.deepcopy(model)
    q = quantune.quantize(model, None, image_batches)
    for layer in q.quantized_layers().values():  # what bias correction does to a bias-less layer
        layer.bias = torch.nn.Parameter(torch.randn(layer.weight.shape[0]))
    expected = q(image_batches[0])
    quantune.save(q, tmp_path / "art", include_module=False)
    q2 = quantune.load(tmp_path / "art", model=fresh)
    assert all(m.bias is not None for m in q2.quantized_layers().values())
    assert torch.equal(expected, q2(image_batches[0]))
