"""benchmarks/allocation.py: paired significance of ilp against the baselines in the verdicts."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench(benchmark_module: Callable[[str], ModuleType]) -> ModuleType:
    return benchmark_module("allocation")


def test_paired_z_sign_and_size(bench: ModuleType) -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0.9, 0.05, 400)
    z = bench.paired_z_against({
        "greedy": base, "uniform": base - 0.2, "ilp": base + rng.normal(0.0, 1e-3, 400) - 1e-3})
    assert z["uniform"] > 100  # ilp far above uniform on every sample
    assert -25 < z["greedy"] < -15  # 0.001 below greedy, spread 0.001, 400 samples: z ~ -20
    same = bench.paired_z_against({"greedy": base, "ilp": base.copy()})
    assert same == {"greedy": 0.0}
    assert bench.paired_z_against({"greedy": base}) == {}


def test_verdict_names_the_z_of_a_shortfall(bench: ModuleType) -> None:
    rows = [
        {"model": "m", "policy": "uniform", "budget_avg_bits": 4.0, "metric": 0.5},
        {"model": "m", "policy": "greedy", "budget_avg_bits": 4.0, "metric": 0.9},
        {"model": "m", "policy": "ilp", "budget_avg_bits": 4.0, "metric": 0.95, "paired_z": {"greedy": 3.0}},
        {"model": "m", "policy": "greedy", "budget_avg_bits": 6.0, "metric": 0.99213},
        {"model": "m", "policy": "ilp", "budget_avg_bits": 6.0, "metric": 0.99210,
         "paired_z": {"greedy": -0.4}},
    ]
    (verdict,) = bench.check_targets(rows)
    assert "NOT MET" in verdict and "6.0 (paired z vs greedy -0.4)" in verdict
    rows[-1]["metric"] = 0.9922
    assert bench.check_targets(rows) == ["m: ilp >= uniform, greedy at every budget, strictly at <= 4 bits: MET"]


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_paired_z_of_a_spreadless_difference_is_finite_in_json(bench: ModuleType, value: float) -> None:
    base = np.linspace(0.0, 1.0, 10)
    shift = 0.1 if value > 0 else -0.1
    z = bench.paired_z_against({"greedy": base, "ilp": base + shift})
    assert z["greedy"] == pytest.approx(1e9 if value > 0 else -1e9)
