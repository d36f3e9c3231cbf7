"""Layer-wise minibatches: a conv's output window equals the same window of the full output."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantune.calibration.layer_batches import LayerBatches
from quantune.config import ActQuant, LayerQuantConfig, WeightQuant
from quantune.modules import QuantizedLayer

CFG = LayerQuantConfig(WeightQuant(bits=8), ActQuant(bits=8))


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation", "groups", "size"),
    [(3, 1, 1, 1, 1, 20), (3, 2, 1, 1, 4, 33), (1, 1, 0, 1, 1, 18), (5, 2, 2, 1, 8, 40), (3, 1, 2, 2, 1, 21),
     (3, (2, 1), (1, 0), 1, 1, 36)],
)
def test_windows_match_the_full_convolution(kernel, stride, padding, dilation, groups, size):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups)
    layer = QuantizedLayer(conv, CFG)
    x = torch.randn(6, 8, size, size)
    with torch.no_grad():
        y = conv(x)
    batches = LayerBatches(layer, x, y, batch=4, generator=torch.Generator().manual_seed(1), window=4)
    assert batches.window is not None
    for _ in range(60):  # enough draws to reach both borders, where zeros are padded
        xb, yb = batches.draw()
        assert yb.shape[2:] == (4, 4) and xb.shape[0] == yb.shape[0] == 4
        with torch.no_grad():
            out = batches.forward(xb, conv.weight, conv.bias)
        # The window of the full output (targets) is what the cut input produces.
        torch.testing.assert_close(out, yb, rtol=1e-5, atol=1e-5)


def test_small_maps_linear_rows_and_string_padding_draw_whole_samples():
    torch.manual_seed(0)
    small = QuantizedLayer(nn.Conv2d(4, 4, 3, padding=1), CFG)
    x = torch.randn(5, 4, 8, 8)
    b = LayerBatches(small, x, x, batch=3, generator=torch.Generator().manual_seed(0), window=16)
    assert b.window is None and b.draw()[0].shape == (3, 4, 8, 8)
    same = QuantizedLayer(nn.Conv2d(4, 4, 3, padding="same"), CFG)
    big = torch.randn(2, 4, 40, 40)
    assert LayerBatches(same, big, big, batch=2, generator=torch.Generator(), window=16).window is None
    linear = QuantizedLayer(nn.Linear(6, 3), CFG)
    rows = torch.randn(100, 6)
    xb, yb = LayerBatches(linear, rows, rows[:, :3], batch=32, generator=torch.Generator()).draw()
    assert xb.shape == (32, 6) and yb.shape == (32, 3)
    # A batch larger than the data draws as many rows as there are.
    assert LayerBatches(linear, rows[:7], rows[:7, :3], batch=32, generator=torch.Generator()).draw()[0].shape[0] == 7
