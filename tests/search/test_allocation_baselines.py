"""The ``greedy`` and ``uniform`` baselines on hand-made cases.

Their budget compliance and loss against brute force on random instances are tested
with the exact policies in ``test_allocation_ilp.py``.
"""

from __future__ import annotations

import math

import pytest

from quantune.search.allocation import (
    AllocationInfeasibleError,
    Budget,
    LayerOption,
    LayerSpec,
    allocate_bits,
)
from quantune.search.allocation_synthetic import synthetic_layers


def test_greedy_is_beaten_by_ilp_on_a_knapsack_trap() -> None:
    # Greedy first takes b's cheap 8->6 step, then must still demote a: 0.45.
    # The optimum demotes only a: 0.4.
    layers = [LayerSpec.from_table("a", 100, 1, {8: 0.0, 4: 0.4}),
              LayerSpec.from_table("b", 100, 1, {8: 0.0, 6: 0.05, 2: 10.0})]
    budget = Budget(avg_bits=6)
    greedy = allocate_bits(layers, budget, policy="greedy")
    ilp = allocate_bits(layers, budget)
    assert greedy.bits == {"a": (4, 8), "b": (6, 8)} and math.isclose(greedy.predicted_loss, 0.45)
    assert ilp.bits == {"a": (4, 8), "b": (8, 8)} and ilp.predicted_loss == 0.4


def test_greedy_gives_up_where_ilp_succeeds() -> None:
    # 2-bit is small but slow: greedy jumps there for size, then breaks latency.
    layer = LayerSpec("x", 100, 1, (LayerOption(8, 8, 0.0, 1.0), LayerOption(4, 8, 0.1, 0.6),
                                    LayerOption(2, 8, 0.05, 2.0)))
    budget = Budget(avg_bits=4, latency_ms=1.0)
    with pytest.raises(AllocationInfeasibleError, match="try policy='ilp'"):
        allocate_bits([layer], budget, policy="greedy")
    assert allocate_bits([layer], budget).bits == {"x": (4, 8)}


def test_greedy_matches_ilp_closely_on_monotone_tables() -> None:
    layers = synthetic_layers(40, seed=8)
    budget = Budget(avg_bits=4.0)
    greedy = allocate_bits(layers, budget, policy="greedy")
    ilp = allocate_bits(layers, budget)
    assert ilp.predicted_loss <= greedy.predicted_loss <= 1.5 * ilp.predicted_loss
    assert greedy.binding == ("avg_bits",)


def test_uniform_uses_one_width_with_8_bit_edges() -> None:
    layers = synthetic_layers(10, seed=6)
    total = sum(layer.params for layer in layers)
    edges = layers[0].params + layers[-1].params
    avg = (8 * edges + 4 * (total - edges)) / total  # exactly affordable at 4 bits
    alloc = allocate_bits(layers, Budget(avg_bits=avg), policy="uniform")
    bits = [c.w_bits for c in alloc.layers]
    assert bits[0] == bits[-1] == 8 and set(bits[1:-1]) == {4}
    assert alloc.binding == ("avg_bits",)  # 6 bits did not fit
    unconstrained = allocate_bits(layers, policy="uniform")
    assert {c.w_bits for c in unconstrained.layers} == {8}


def test_uniform_lowers_edges_only_when_nothing_else_fits() -> None:
    layers = [LayerSpec.from_table(n, 1000, 1, {8: 0.0, 4: 0.1, 2: 0.5}) for n in "abc"]
    alloc = allocate_bits(layers, Budget(avg_bits=3), policy="uniform")
    assert [c.w_bits for c in alloc.layers] == [2, 2, 2]
    pinned = allocate_bits(layers, Budget(avg_bits=4), policy="uniform", pins={"b": 2})
    assert [c.w_bits for c in pinned.layers] == [4, 2, 4]
