"""CBC wrapper behaviour: time-limited status, exact re-verification, huge coefficients."""

from __future__ import annotations

import math
import random

import pytest

import quantune.search.allocation_ilp as ilp_module
from quantune.search.allocation import (
    AllocationSolverError,
    Budget,
    LayerOption,
    LayerSpec,
    allocate_bits,
)
from quantune.search.allocation_cbc import SolveResult
from quantune.search.allocation_synthetic import synthetic_layers


def test_unproven_solutions_are_labelled_feasible(monkeypatch) -> None:
    real = ilp_module.solve_choice_program

    def time_limited(*args, **kwargs) -> SolveResult:
        return SolveResult(real(*args, **kwargs).selection, proven=False)

    monkeypatch.setattr(ilp_module, "solve_choice_program", time_limited)
    alloc = allocate_bits(synthetic_layers(6, seed=1), Budget(avg_bits=4))
    assert alloc.status == "feasible" and alloc.avg_bits <= 4


def test_over_budget_solver_answers_are_cut_off_then_rejected(monkeypatch) -> None:
    layers = synthetic_layers(6, seed=1)
    real = ilp_module.solve_choice_program
    cuts: list[int] = []

    def sloppy_once(objective, rows, *, time_limit_s, excluded=()) -> SolveResult:
        cuts.append(len(excluded))
        if not excluded:  # pretend CBC's tolerance admitted the all-8-bit answer
            return SolveResult([0] * len(objective), proven=True)
        return real(objective, rows, time_limit_s=time_limit_s, excluded=excluded)

    monkeypatch.setattr(ilp_module, "solve_choice_program", sloppy_once)
    alloc = allocate_bits(layers, Budget(avg_bits=4))
    assert alloc.avg_bits <= 4 and cuts[:2] == [0, 1]

    def always_sloppy(objective, rows, *, time_limit_s, excluded=()) -> SolveResult:
        return SolveResult([0] * len(objective), proven=True)

    monkeypatch.setattr(ilp_module, "solve_choice_program", always_sloppy)
    with pytest.raises(AllocationSolverError, match="over budget"):
        allocate_bits(layers, Budget(avg_bits=4))


def test_huge_coefficients_stay_exact() -> None:
    # ~1e9 weights and ~1e12 MACs per layer: BOPs near 1e14, so one bit of slack is
    # 1e-14 relative -- far below CBC's tolerances. The result must still be exact.
    # (Each budget sits exactly at, or one unit below, a reachable total.)
    rng = random.Random(3)
    layers = []
    for i in range(6):
        params = rng.randint(10**8, 10**9)
        layers.append(LayerSpec(f"l{i}", params, params * rng.randint(100, 1000), tuple(
            LayerOption(w, 8, rng.uniform(0, 1) * (8 - w)) for w in (8, 6, 4, 3, 2))))
    reference = allocate_bits(layers, Budget(avg_bits=4.3), policy="exhaustive")
    for budget in (Budget(avg_bits=4.3), Budget(size_bytes=reference.size_bytes),
                   Budget(bops=reference.bops), Budget(bops=reference.bops - 1),
                   Budget(size_bytes=reference.size_bytes - 0.125)):
        exact = allocate_bits(layers, budget, policy="exhaustive")
        alloc = allocate_bits(layers, budget)
        assert math.isclose(alloc.predicted_loss, exact.predicted_loss, rel_tol=1e-9)
        assert alloc.weight_bits_total <= 8 * (budget.size_bytes or math.inf)
        assert alloc.bops <= (budget.bops or math.inf)
