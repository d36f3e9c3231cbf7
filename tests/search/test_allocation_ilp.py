"""The ``ilp`` policy: optimality against brute force, constraints, errors, determinism."""

from __future__ import annotations

import math
import sys
import time
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from types import ModuleType

import pytest

from quantune.errors import UserInputError
from quantune.search.allocation import (
    AllocationInfeasibleError,
    Budget,
    LayerOption,
    LayerSpec,
    allocate_bits,
    ilp_alternatives,
)
from quantune.search.allocation_synthetic import synthetic_layers


def _load_oracle() -> ModuleType:
    """The brute-force oracle lives in a sibling test file (no shared test package)."""
    path = Path(__file__).with_name("test_allocation_oracle.py")
    spec = spec_from_file_location("_quantune_allocation_oracle", path)
    if spec.name not in sys.modules:  # dataclasses look their module up in sys.modules
        module = module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules[spec.name]


oracle = _load_oracle()


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("policy", ["ilp", "exhaustive", "greedy", "uniform"])
def test_policies_against_brute_force(seed: int, policy: str) -> None:
    """Exact policies hit the optimum; baselines stay within budget and never beat it."""
    inst = oracle.random_instance(seed)
    best = oracle.brute_force(inst)
    exact = policy in ("ilp", "exhaustive")
    if best is None:
        if exact:
            with pytest.raises(UserInputError):
                allocate_bits(inst.layers, inst.budget, policy=policy, **inst.kwargs())
        return
    try:
        alloc = allocate_bits(inst.layers, inst.budget, policy=policy, **inst.kwargs())
    except AllocationInfeasibleError as err:
        assert not exact and f"policy {policy!r}" in str(err)  # a heuristic may give up, saying so
        return
    oracle.satisfies(inst, alloc)
    if exact:
        assert alloc.status == "optimal"
        assert math.isclose(alloc.predicted_loss, best, rel_tol=1e-9, abs_tol=1e-12)
    else:
        assert alloc.status == "heuristic" and alloc.predicted_loss >= best - 1e-12


def test_pins_groups_ranges_and_float_are_honoured() -> None:
    layers = synthetic_layers(8, seed=3, with_float=True, noise=0.5)
    kwargs = {
        "pins": {"layers.0": 8, "layers.7": (6, 8)},
        "bit_ranges": {"layers.1": (3, 4), "re:layers\\.[5]": (None, 3)},
        "groups": [["layers.2", "layers.3"], ["layers.3", "layers.4"]],
        "keep_float": ["layers.6"],
    }
    alloc = allocate_bits(layers, Budget(avg_bits=8.0), **kwargs)
    bits = alloc.bits
    assert bits["layers.0"][0] == 8 and bits["layers.7"] == (6, 8)
    assert 3 <= bits["layers.1"][0] <= 4 and bits["layers.5"][0] <= 3
    assert bits["layers.2"] == bits["layers.3"] == bits["layers.4"]  # groups merge
    with pytest.raises(UserInputError, match="no option"):  # float (32) is outside (None, 3)
        allocate_bits(layers, Budget(avg_bits=8.0), **kwargs | {"keep_float": ["layers.5"]})
    alloc = allocate_bits(layers, Budget(avg_bits=20.0), keep_float=["layers.4"])
    assert alloc.weight_bits["layers.4"] is None and alloc.layers[4].is_float


@pytest.mark.parametrize("name", ["size_bytes", "avg_bits", "bops", "latency_ms"])
def test_single_infeasible_budget_names_the_exact_minimum(name: str) -> None:
    layers = synthetic_layers(12, seed=7, noise=0.3)
    groups = [["layers.3", "layers.4"]]
    pins = {"layers.0": 8}
    with pytest.raises(AllocationInfeasibleError) as info:
        allocate_bits(layers, Budget(**{name: 1e-3}), pins=pins, groups=groups)
    err = info.value
    assert err.constraint == name and err.requested == 1e-3
    assert name in str(err) and repr(err.min_feasible) in str(err)
    value = err.min_feasible
    alloc = allocate_bits(layers, Budget(**{name: value}), pins=pins, groups=groups)
    assert name in alloc.binding
    below = value * (1 - 1e-7) if name == "latency_ms" else math.nextafter(value, 0)
    with pytest.raises(AllocationInfeasibleError):
        allocate_bits(layers, Budget(**{name: below}), pins=pins, groups=groups)


def _conflicting_layers() -> list[LayerSpec]:
    """Low bits are small but slow (no native 2/3-bit kernel): size and latency fight."""
    def layer(i: int) -> LayerSpec:
        return LayerSpec(f"l{i}", 1000 * (i + 1), 10_000 * (i + 1), (
            LayerOption(8, 8, 0.0, 1.0 + 0.1 * i),
            LayerOption(4, 8, 0.1 * (i + 1), 0.6 + 0.05 * i),
            LayerOption(2, 8, 0.5 * (i + 1), 2.0 + 0.2 * i)))
    return [layer(i) for i in range(4)]


def test_jointly_infeasible_budgets_name_the_smallest_value_given_the_others() -> None:
    layers = _conflicting_layers()
    inst = oracle.Instance(layers, Budget(avg_bits=3.0, latency_ms=4.0))
    assert oracle.brute_force(inst) is None
    with pytest.raises(AllocationInfeasibleError) as info:
        allocate_bits(layers, inst.budget)
    err = info.value
    assert err.constraint == "avg_bits" and "cannot be met together" in str(err)
    # Oracle: smallest total weight bits among selections that keep latency <= 4.
    total = sum(layer.params for layer in layers)
    ok = [oracle.totals(layers, c) for c in oracle.combos(inst)
          if oracle.within(inst.budget, total, oracle.totals(layers, c), skip="avg_bits")]
    assert math.isclose(err.min_feasible, min(t["weight_bits"] for t in ok) / total, rel_tol=1e-15)
    allocate_bits(layers, Budget(avg_bits=err.min_feasible, latency_ms=4.0))
    with pytest.raises(AllocationInfeasibleError):
        allocate_bits(layers, Budget(avg_bits=math.nextafter(err.min_feasible, 0), latency_ms=4.0))
    ex = pytest.raises(AllocationInfeasibleError, allocate_bits, layers, inst.budget,
                       policy="exhaustive").value
    assert (ex.constraint, ex.min_feasible) == (err.constraint, err.min_feasible)


def test_binding_reports_only_budgets_that_cost_loss() -> None:
    layers = synthetic_layers(10, seed=2)
    loose = allocate_bits(layers, Budget(avg_bits=4.0, size_bytes=1e12))
    assert loose.binding == ("avg_bits",)
    assert allocate_bits(layers, Budget(avg_bits=8.0)).binding == ()


def test_ties_prefer_more_bits_and_results_are_deterministic() -> None:
    flat = [LayerSpec.from_table(f"l{i}", 100 + i, 1000, {8: 0.0, 6: 0.0, 4: 0.0, 2: 0.0})
            for i in range(30)]
    assert set(allocate_bits(flat).weight_bits.values()) == {8}
    alloc = allocate_bits(flat, Budget(avg_bits=5.0))
    assert alloc.avg_bits <= 5.0 and alloc.predicted_loss == 0.0
    layers = synthetic_layers(60, seed=11, a_bits=(4, 8), noise=0.4)
    budget = Budget(avg_bits=4.2, bops=0.5 * sum(layer.macs * 64 for layer in layers))
    runs = {allocate_bits(layers, budget).to_json() for _ in range(3)}
    assert len(runs) == 1


def test_two_hundred_layers_five_options_solve_quickly() -> None:
    layers = synthetic_layers(200, seed=5, noise=0.3)
    latency = 0.8 * sum(layer.options[0].latency_ms for layer in layers)
    start = time.perf_counter()
    alloc = allocate_bits(layers, Budget(avg_bits=4.5, latency_ms=latency),
                          groups=[[f"layers.{i}", f"layers.{i + 1}"] for i in range(0, 30, 3)],
                          pins={"layers.0": 8, "layers.199": 8}, solver_time_limit_s=30)
    elapsed = time.perf_counter() - start
    assert alloc.status == "optimal" and alloc.avg_bits <= 4.5
    assert elapsed < 60, f"200-layer allocation took {elapsed:.1f} s (target < 10 s)"


@pytest.mark.parametrize("seed", range(25))
def test_alternatives_are_the_k_best_feasible_selections(seed: int) -> None:
    """The runners-up are distinct, within every rule, and their losses are exactly the
    k smallest of all feasible selections (brute force), in order."""
    inst = oracle.random_instance(seed)
    total = sum(layer.params for layer in inst.layers)
    losses = sorted(t["loss"] for t in (oracle.totals(inst.layers, c) for c in oracle.combos(inst))
                    if oracle.within(inst.budget, total, t))
    if not losses:
        return
    alts = ilp_alternatives(inst.layers, inst.budget, count=4, **inst.kwargs())
    assert len(alts) == min(4, len(losses))
    assert len({tuple(sorted(a.bits.items())) for a in alts}) == len(alts)
    for alt in alts:
        oracle.satisfies(inst, alt)
    assert alts[0].bits == allocate_bits(inst.layers, inst.budget, **inst.kwargs()).bits
    for alt, expected in zip(alts, losses, strict=False):
        assert math.isclose(alt.predicted_loss, expected, rel_tol=1e-9, abs_tol=1e-12)
    assert [a.status for a in alts[1:]] == ["alternative"] * (len(alts) - 1)
    with pytest.raises(UserInputError, match="at least 1"):
        ilp_alternatives(inst.layers, inst.budget, count=0)
