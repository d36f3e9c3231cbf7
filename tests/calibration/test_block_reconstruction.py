"""Block reconstruction (BRECQ-style AdaRound by blocks): which units are blocks, that a
block's joint rounding stays on the grid and lowers the block error, determinism, the
held-out keep check, the layer-wise fallback, and the procedure's step name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantune.calibration.block_reconstruction import (
    BlockNotReplayable,
    collect_block_samples,
    reconstruct_block,
)
from quantune.calibration.blocks import ReconstructionUnit, find_units
from quantune.config import CalibrationProcedure
from quantune.errors import UserInputError
from quantune.modules import QuantizedLayer


class Bottleneck(nn.Module):
    """Expand 1x1 -> depthwise 3x3 -> project 1x1, plus the residual (MobileNetV2 style)."""

    def __init__(self, c: int, expand: int = 3) -> None:
        super().__init__()
        h = c * expand
        self.expand = nn.Sequential(nn.Conv2d(c, h, 1), nn.BatchNorm2d(h), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(h, h, 3, padding=1, groups=h), nn.BatchNorm2d(h), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(h, c, 1), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.depthwise(self.expand(x)))


class MaskedBlock(nn.Module):
    """A block called with a tensor keyword (like a transformer layer's attention mask)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(c, c), nn.Linear(c, c)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.b(torch.relu(self.a(x)))
        return y if mask is None else y * mask


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.blocks = nn.ModuleList([Bottleneck(8), Bottleneck(8)])
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=(2, 3)))


class MaskedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([MaskedBlock(16)])
        self.out = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.layers[0](x, mask=torch.ones_like(x)))


@pytest.fixture
def make_net(fit_bn):
    """A fresh :class:`Net` with fitted BatchNorms and its calibration data, per call."""

    def make(seed: int = 0) -> tuple[nn.Module, list[torch.Tensor]]:
        torch.manual_seed(seed)
        model = Net()
        data = [torch.randn(8, 3, 10, 10) for _ in range(4)]
        return fit_bn(model, data), data

    return make


def _proc(iters: int, batch: int, holdout: float = 0.0) -> CalibrationProcedure:
    return CalibrationProcedure(adaround_iters=iters, adaround_batch_size=batch, layerwise_holdout=holdout)


def _block_samples(p, q, name, float_target=True):
    return collect_block_samples(p.float_model, q.model, name, p.calibration_data(None, 0),
                                 cache_bytes=2**30, seed=0, float_target=float_target)


def test_units_are_container_children_with_two_or_more_quantized_layers(make_net, quantize_w3a8):
    model, data = make_net()
    p, q = quantize_w3a8(model, data)
    order = list(q.quantized_layers())
    units = find_units(q.model, order)
    assert [u.name for u in units] == ["stem.0", "blocks.0", "blocks.1", "head"]
    assert units[1].layers == ("blocks.0.expand.0", "blocks.0.depthwise.0", "blocks.0.project.0")
    assert units[0] == ReconstructionUnit("stem.0", ("stem.0",)) and not units[0].is_block
    assert units[1].is_block
    # Every layer in exactly one unit.
    assert sorted(n for u in units for n in u.layers) == sorted(order)


def test_a_flat_sequential_network_has_only_lone_layers(cnn, quantize_w3a8):
    model, data = cnn
    p, q = quantize_w3a8(model, data)
    units = find_units(q.model, list(q.quantized_layers()))
    assert all(not u.is_block for u in units)


def test_block_rounding_stays_on_the_grid_and_lowers_the_block_error(make_net, quantize_w3a8):
    model, data = make_net()
    p, q = quantize_w3a8(model, data)
    name = "blocks.0"
    block = dict(q.model.named_modules())[name]
    layers = [m for m in block.modules() if isinstance(m, QuantizedLayer)]
    samples = _block_samples(p, q, name)
    before = [layer.weight.detach().clone() for layer in layers]
    res = reconstruct_block(name, block, layers, samples, _proc(300, 8), seed=0)
    assert res.kept and res.mse_after < 0.9 * res.mse_before
    assert res.layers == 3 and 0.0 < res.flipped < 0.5
    with torch.no_grad():
        assert float(F.mse_loss(block(samples.x), samples.y)) == pytest.approx(res.mse_after, rel=1e-4)
    for layer, w0 in zip(layers, before, strict=True):
        s = layer.w_scale.reshape(-1, 1, 1, 1)
        codes = layer.weight / s + layer.w_zero_point.reshape(s.shape).float()
        assert torch.allclose(codes, torch.round(codes), atol=1e-4)  # on the grid
        # Each code one of the two neighbours of the float weight (inside the range).
        float_codes = w0 / s
        lo, hi = layer.w_qrange
        inside = (float_codes > lo) & (float_codes < hi)
        assert torch.all(torch.round(codes)[inside] >= torch.floor(float_codes)[inside])
        assert torch.all(torch.round(codes)[inside] <= torch.ceil(float_codes)[inside])


def test_block_reconstruction_is_deterministic_under_a_seed(make_net, quantize_w3a8):
    weights = []
    for _ in range(2):
        model, data = make_net()
        p, q = quantize_w3a8(model, data)
        block = dict(q.model.named_modules())["blocks.1"]
        layers = [m for m in block.modules() if isinstance(m, QuantizedLayer)]
        reconstruct_block("blocks.1", block, layers, _block_samples(p, q, "blocks.1"), _proc(60, 4), seed=3)
        weights.append(torch.cat([m.weight.detach().flatten() for m in layers]))
    assert torch.equal(weights[0], weights[1])


def test_a_block_that_cannot_improve_on_held_out_samples_is_left_unchanged(make_net, quantize_w3a8):
    model, data = make_net()
    p, q = quantize_w3a8(model, data)
    block = dict(q.model.named_modules())["blocks.0"]
    layers = [m for m in block.modules() if isinstance(m, QuantizedLayer)]
    samples = _block_samples(p, q, "blocks.0")
    before = [m.weight.detach().clone() for m in layers]
    # Targets unrelated to the block: whatever the fit does, the check cannot confirm it.
    samples.y = torch.randn_like(samples.y) * 10
    res = reconstruct_block("blocks.0", block, layers, samples, _proc(40, 4, holdout=0.5), seed=0)
    if not res.kept:
        assert all(torch.equal(m.weight, w) for m, w in zip(layers, before, strict=True))
        assert res.flipped == 0.0 and res.mse_after == res.mse_before
    else:  # kept only if its held-out error really fell
        assert res.mse_after < res.mse_before


def test_brecq_procedure_lowers_the_model_error_and_logs_blocks(make_net, quantize_w3a8):
    model, data = make_net()
    x = torch.cat(data)
    _, plain = quantize_w3a8(model, data)
    p, q = quantize_w3a8(model, data, adaround=True, adaround_blocks=True, adaround_iters=200, adaround_batch_size=8)
    with torch.no_grad():
        ref = model(x)
        assert F.mse_loss(q(x), ref) < F.mse_loss(plain(x), ref)
    log = q.calibration_log["adaround"]
    assert log["blocks"] is True
    names = [r["name"] for r in log["layers"]]
    assert names == ["stem.0", "blocks.0", "blocks.1", "head"]
    # Integer execution reproduces the simulation of the learned codes.
    q.set_mode("integer")
    with torch.no_grad():
        integer = q(x)
    q.set_mode("simulate")
    with torch.no_grad():
        assert torch.allclose(integer, q(x), atol=1e-3, rtol=1e-3)


def test_a_block_called_with_tensor_keywords_falls_back_to_layer_wise(quantize_w3a8):
    torch.manual_seed(0)
    model = MaskedNet().eval()
    data = [torch.randn(16, 16) for _ in range(4)]
    p, q = quantize_w3a8(model, data)
    with pytest.raises(BlockNotReplayable):
        _block_samples(p, q, "layers.0")
    p, q = quantize_w3a8(model, data, adaround=True, adaround_blocks=True, adaround_iters=20)
    names = [r["name"] for r in q.calibration_log["adaround"]["layers"]]
    assert names == ["layers.0.a", "layers.0.b", "out"]  # one result per layer: layer-wise


def test_brecq_step_name_round_trips_and_excludes_adaround():
    proc = CalibrationProcedure.from_steps("brecq+biascorr")
    assert proc.adaround and proc.adaround_blocks and proc.bias_correction
    assert proc.steps == "brecq+biascorr"
    assert CalibrationProcedure.from_steps("adaround").steps == "adaround"
    with pytest.raises(UserInputError, match="not both"):
        CalibrationProcedure.from_steps("adaround+brecq")


def test_search_value_block_selects_block_reconstruction():
    from quantune.tune_space import DEFAULT_DIMENSIONS, point_to_config, ptq_space

    procedure = point_to_config({"w_bits": 4, "adaround": "block"}, ["a", "b", "c"]).procedure
    assert procedure.adaround and procedure.adaround_blocks and procedure.layerwise_float_target
    assert not point_to_config({"w_bits": 4, "adaround": True}, ["a", "b", "c"]).procedure.adaround_blocks
    assert "block" not in DEFAULT_DIMENSIONS["adaround"]  # opt-in: the default space is unchanged
    assert ptq_space({"adaround": (False, "block")}).size == 2
    with pytest.raises(UserInputError, match="block"):
        ptq_space({"adaround": ("blocks",)})


def test_block_samples_of_mixed_image_sizes_keep_the_size_with_the_most_samples():
    from quantune.batches import largest_same_shape_batches

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())).eval()
    batches = [torch.randn(2, 3, 8, 8), torch.randn(3, 3, 10, 12), torch.randn(4, 3, 10, 12), (torch.randn(4, 3, 8, 8), None)]
    assert [b.shape[0] for b in largest_same_shape_batches(batches)] == [3, 4]
    samples = collect_block_samples(model, model, "1", batches, cache_bytes=1 << 30, seed=0, float_target=True)
    assert samples is not None and samples.x.shape == (7, 4, 10, 12) and samples.y.shape == (7, 4, 10, 12)
