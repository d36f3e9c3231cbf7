"""Shared fixtures of the calibration tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Every calibration test runs on one intra-op thread (see tests/conftest.py)."""


def small_cnn(seed: int = 0) -> tuple[nn.Module, list[torch.Tensor]]:
    """Conv-BN-ReLU x3 (one depthwise) + Linear, with BatchNorm statistics fitted to the data."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )
    data = [torch.randn(16, 3, 12, 12) for _ in range(6)]
    return fit_batchnorms(model, data), data


def fit_batchnorms(model: nn.Module, data: list[torch.Tensor]) -> nn.Module:
    """Random BatchNorm affine parameters, statistics fitted exactly to ``data``; eval mode."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average: exact statistics of the data
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.train()
    with torch.no_grad():
        for b in data:
            model(b)
    return model.eval()


@pytest.fixture
def cnn() -> tuple[nn.Module, list[torch.Tensor]]:
    return small_cnn()


@pytest.fixture
def fit_bn():
    """:func:`fit_batchnorms`, for test modules that build their own networks."""
    return fit_batchnorms


@pytest.fixture
def quantize_w3a8():
    """``(model, data, **procedure) -> (prepared, simulated W3A8 model)`` for test networks."""
    from quantune.config import (
        ActQuant,
        CalibrationProcedure,
        LayerQuantConfig,
        QuantConfig,
        WeightQuant,
    )
    from quantune.prepare import prepare

    layer = LayerQuantConfig(WeightQuant(bits=3), ActQuant(bits=8))

    def quantize(model: nn.Module, data: list[torch.Tensor], **procedure):
        p = prepare(model, data)
        return p, p.quantize(QuantConfig(default=layer, procedure=CalibrationProcedure(**procedure)), "simulate")

    return quantize


def smooth_images(n_batches: int, seed: int = 0) -> list[torch.Tensor]:
    """Spatially correlated images: i.i.d. noise of the same per-channel mean and spread
    has different convolution statistics, so a synthesis that starts there has work to do."""
    g = torch.Generator().manual_seed(seed)
    return [F.interpolate(torch.randn(8, 3, 5, 5, generator=g), size=20, mode="bilinear") for _ in range(n_batches)]


@pytest.fixture
def smooth_cnn(fit_bn) -> tuple[nn.Module, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )
    data = smooth_images(4)
    return fit_bn(model, data), data


@pytest.fixture
def smooth() -> Callable[..., list[torch.Tensor]]:
    """:func:`smooth_images`, for test modules."""
    return smooth_images
