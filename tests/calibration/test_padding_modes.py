"""Convolutions with reflect / replicate / circular and "same" padding go through every
calibration step and run in integer mode (they used to make every trial fail)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantune.config import (
    ActQuant,
    CalibrationProcedure,
    LayerQuantConfig,
    QuantConfig,
    WeightQuant,
)
from quantune.prepare import PreparedModel


def _padded_net(fit_bn) -> tuple[nn.Module, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 12, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(12), nn.ReLU(),
        nn.Conv2d(12, 12, 4, padding="same", groups=12), nn.ReLU(),
        nn.Conv2d(12, 16, 3, stride=2, padding=(2, 1), padding_mode="replicate"), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding="same", padding_mode="circular"), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    )
    data = [F.interpolate(torch.randn(8, 3, 6, 6), size=40, mode="bilinear") for _ in range(4)]
    return fit_bn(model, data), data


@pytest.mark.parametrize("steps", ["gptq+biascorr", "adaquant", "adaround", "brecq"])
def test_every_step_calibrates_padded_convolutions(fit_bn, steps: str) -> None:
    model, data = _padded_net(fit_bn)
    prepared = PreparedModel(model, data, show_progress=False)
    layer = LayerQuantConfig(WeightQuant(bits=4), ActQuant(bits=8))
    procedure = CalibrationProcedure.from_steps(steps)
    if procedure.adaquant or procedure.adaround:
        procedure = CalibrationProcedure.from_steps(steps, adaquant_iters=30, adaround_iters=30)
    plain = prepared.quantize(QuantConfig(layer), mode="simulate")
    tuned = prepared.quantize(QuantConfig(layer, procedure=procedure), mode="simulate")
    x = torch.cat(data)
    with torch.no_grad():
        ref = prepared.float_model(x)
        assert F.mse_loss(tuned(x), ref) <= F.mse_loss(plain(x), ref) * 1.05
        sim = tuned(x)
        tuned.set_mode("integer")
        torch.testing.assert_close(tuned(x), sim, rtol=1e-3, atol=1e-3)
