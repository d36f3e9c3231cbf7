"""Shared fixtures: small models and the bundled example."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

# The fused (torch.compile) activation quantizer costs a one-time compile of tens of
# seconds per process; the suite runs the bit-identical eager path except where a test
# asks for the compiled one explicitly (tests/core/test_kernels*.py).
os.environ.setdefault("QUANTUNE_EAGER_QUANTIZE", "1")

import pytest  # noqa: E402
import torch
from torch import nn


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module.

    The test machines are shared: a single thread avoids oversubscribed OpenMP spinning
    (10-30x slowdowns of small tensor ops) and keeps timings and results reproducible.
    """
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="session")
def benchmark_module() -> Callable[[str], ModuleType]:
    """Loads ``benchmarks/<name>.py`` as a module (benchmarks/ is not a package)."""

    def load(name: str) -> ModuleType:
        key = f"quantune_bench_{name}"
        if key not in sys.modules:
            spec = importlib.util.spec_from_file_location(key, BENCHMARKS / f"{name}.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[key] = module  # dataclasses resolve the module by name
            spec.loader.exec_module(module)
        return sys.modules[key]

    return load


@pytest.fixture(scope="session")
def example():
    """``(model, calib_batches, eval_batches)`` of the bundled example."""
    from quantune.example import load_example

    return load_example()


def make_convnet(seed: int = 0) -> nn.Module:
    """A small CNN with BN, grouped and depthwise convs, random BN statistics."""
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    )
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m.eval()


@pytest.fixture
def convnet() -> nn.Module:
    return make_convnet()


@pytest.fixture
def image_batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, 12, 12, generator=g) for _ in range(4)]
