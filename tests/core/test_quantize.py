"""quantize(): accuracy on the bundled example, integer == simulate, and bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import quantune
from quantune.config import ActQuant, LayerQuantConfig, QuantConfig, WeightQuant
from quantune.errors import UserInputError
from quantune.evaluation import Evaluator


def test_example_w8a8_per_channel_loses_at_most_one_point(example):
    model, calib, val = example
    evaluate = Evaluator(val, "top1")
    baseline = evaluate(model)
    assert baseline >= 97.0
    q = quantune.quantize(model, QuantConfig(), calib, mode="integer")
    assert q.mode == "integer"
    assert baseline - evaluate(q) <= 1.0
    assert q.size_bytes() < q.float_size_bytes / 3


@pytest.mark.parametrize(
    "layer_cfg",
    [
        LayerQuantConfig(),
        LayerQuantConfig(WeightQuant(bits=4, granularity="per_tensor"), ActQuant(symmetric=True)),
        LayerQuantConfig(WeightQuant(bits=6, symmetric=False), ActQuant(bits=7)),
    ],
)
def test_integer_mode_matches_simulated_mode(convnet, image_batches, layer_cfg):
    q = quantune.quantize(convnet, QuantConfig(default=layer_cfg), image_batches)
    x = image_batches[1]
    # Accumulators: the simulated layer's float output, divided by the step sizes,
    # must round to exactly the integer path's int32 accumulators.
    captured: dict[str, torch.Tensor] = {}
    layers = q.quantized_layers()

    def hook(name):
        def fn(mod, inputs, out):
            captured[name] = inputs[0]
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    q.set_mode("simulate")
    y_sim = q(x)
    for h in handles:
        h.remove()
    for name, layer in layers.items():
        acc = q.integer_accumulators(name, captured[name])
        sim = layer._float_op(layer.fake_quant_input(captured[name]), layer.fake_quant_weight())
        if layer.bias is not None:
            shape = [1, -1] + [1] * (sim.dim() - 2)
            sim = sim - layer.bias.reshape(shape)
        step = (layer.a_scale * layer.w_scale.expand(layer.weight.shape[0])).reshape([1, -1] + [1] * (sim.dim() - 2))
        assert torch.equal(torch.round(sim / step).to(torch.int32), acc), name
    q.set_mode("integer")
    torch.testing.assert_close(q(x), y_sim, atol=1e-4, rtol=1e-4)


def test_keeps_float_layers_and_does_not_modify_input_model(convnet, image_batches):
    before = {k: v.clone() for k, v in convnet.state_dict().items()}
    q = quantune.quantize(convnet, QuantConfig(overrides=(("re:1.", None),)), image_batches)
    assert q.float_layers == ["11"]
    assert set(q.quantized_layers()) == {"0", "3", "6"}
    for k, v in convnet.state_dict().items():
        assert torch.equal(v, before[k])


class _TokenModel(nn.Module):
    """Python control flow and dict inputs, like a Hugging Face model."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.layers = nn.ModuleList(nn.Linear(16, 16) for _ in range(3))
        self.head = nn.Linear(16, 4)

    def forward(self, input_ids, attention_mask=None):
        h = self.emb(input_ids)
        for i, layer in enumerate(self.layers):
            h = torch.relu(layer(h)) if i % 2 == 0 else h + layer(h)
        if attention_mask is not None:
            h = h * attention_mask.unsqueeze(-1)
        return {"logits": self.head(h.mean(1))}


def test_dict_inputs_and_control_flow():
    torch.manual_seed(0)
    m = _TokenModel().eval()
    batches = [{"input_ids": torch.randint(0, 50, (4, 7)), "attention_mask": torch.ones(4, 7)} for _ in range(3)]
    q = quantune.quantize(m, None, batches)
    assert len(q.quantized_layers()) == 4
    out = q(**batches[0])["logits"]
    ref = m(**batches[0])["logits"]
    assert torch.nn.functional.cosine_similarity(out, ref, dim=1).min() > 0.99


def test_bad_inputs_give_clear_errors(convnet, image_batches):
    with pytest.raises(UserInputError, match="nn.Module"):
        quantune.quantize("not a model", None, image_batches)
    with pytest.raises(UserInputError, match="no quantizable layer"):
        quantune.quantize(nn.Sequential(nn.ReLU()), None, image_batches)
    with pytest.raises(UserInputError, match=r"expects input of shape \[N, 3, H, W\]"):
        quantune.quantize(convnet, None, [torch.randn(2, 5, 8, 8)])
    bad = [image_batches[0].clone()]
    bad[0][0, 0, 0, 0] = float("nan")
    with pytest.raises(UserInputError, match="NaN"):
        quantune.quantize(convnet, None, bad)
    with pytest.raises(UserInputError, match="empty"):
        quantune.quantize(convnet, None, [])
    with pytest.raises(UserInputError, match="iterable of batches"):
        quantune.quantize(convnet, None, image_batches[0])


def test_unsupported_layer_kept_float_with_warning():
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(1, 1), nn.ConvTranspose2d(2, 2, 1)).eval()
    with pytest.warns(UserWarning, match="ConvTranspose2d"):
        q = quantune.quantize(m, None, [torch.randn(2, 1, 6, 6)])
    assert q.unsupported == [("2", "ConvTranspose2d")]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_models_quantize_and_calibrate_in_float32(dtype):
    from quantune.config import CalibrationProcedure

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    low = model.to(dtype)
    data = [torch.randn(4, 3, 10, 10).to(dtype) for _ in range(3)]
    config = QuantConfig(procedure=CalibrationProcedure(adaquant=True, adaquant_iters=5, bias_correction=True))
    q = quantune.quantize(low, config, data, mode="simulate")
    with torch.no_grad():
        y, ref = q(data[0]), low(data[0])
        assert y.dtype == dtype
        assert torch.nn.functional.cosine_similarity(y.float().flatten(), ref.float().flatten(), dim=0) > 0.99
        # Simulation quantizes in float32: the same codes as a float32 copy of the input.
        layer = q.quantized_layers()["0"]
        torch.testing.assert_close(layer(data[0]).float(), layer(data[0].float()), rtol=1e-2, atol=1e-2)
        # Integer mode: bf16 natively, fp16 through float32 kernels; the output keeps the dtype.
        q.set_mode("integer")
        q(data[0])  # the first call observes the data flow and chains layer 0 into layer 2
        assert any(m.chain_target is not None for m in q.quantized_layers().values())
        y = q(data[0])
        assert y.dtype == dtype  # also through chained uint8 codes
        assert torch.nn.functional.cosine_similarity(y.float().flatten(), ref.float().flatten(), dim=0) > 0.99
