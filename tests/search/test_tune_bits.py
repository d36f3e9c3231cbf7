"""The search's bit policy: every trial's widths come from the allocator under the budget."""

from __future__ import annotations

import pytest

from quantune.errors import UserInputError
from quantune.example import load_example
from quantune.prepare import prepare
from quantune.search.allocation import AllocationInfeasibleError
from quantune.search.sensitivity_cache import clear_memory_cache
from quantune.tune import tune
from quantune.tune_bits import BitPolicy
from quantune.tune_space import point_to_config, ptq_space

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def example(one_thread):
    clear_memory_cache()
    model, calib, evals = load_example()
    return model, calib, evals, prepare(model, calib, show_progress=False)


def _avg_weight_bits(prepared, config) -> float:
    """Weight-element-weighted mean width of a config (float layers count 32)."""
    total = bits = 0
    for info in prepared.layers:
        layer = config.for_layer(info.name)
        bits += info.weight_elements * (32 if layer is None else layer.weight.bits)
        total += info.weight_elements
    return bits / total


def test_every_policy_meets_the_budget_and_ilp_predicts_least_loss(example) -> None:
    *_, prepared = example
    policy = BitPolicy(prepared, "avg-bits=4", weight_bits=(2, 3, 4, 6, 8), show_progress=False)
    losses = {}
    for name in ("ilp", "greedy", "uniform"):
        allocation = policy.allocate(name, 8)
        assert allocation.avg_bits <= 4 + 1e-9
        losses[name] = allocation.predicted_loss
    assert losses["ilp"] <= min(losses["greedy"], losses["uniform"]) + 1e-12
    assert policy.measurements == 1  # one table for the three allocations


def test_points_become_configs_within_the_budget(example) -> None:
    *_, prepared = example
    names = prepared.layer_names
    policy = BitPolicy(prepared, "avg-bits=4.5", show_progress=False)
    point = {"bit_policy": "ilp", "a_method": "entropy", "w_granularity": "per_tensor", "first_last_8bit": True}
    config = point_to_config(point, names, bit_policy=policy)
    assert _avg_weight_bits(prepared, config) <= 4.5 + 1e-9
    assert config.for_layer(names[0]).weight.bits == 8 and config.for_layer(names[-1]).weight.bits == 8
    # The point's other dimensions survive the allocation.
    assert all(config.for_layer(n).weight.granularity == "per_tensor" for n in names)
    assert all(config.for_layer(n).activation.method == "entropy" for n in names)
    # Widths really vary per layer (the allocation is not a disguised uniform width).
    assert len({config.for_layer(n).weight.bits for n in names}) > 1
    # float fallback: the most sensitive layer stays float and still counts in the budget.
    fallback = point_to_config({**point, "float_fallback": 1, "first_last_8bit": False}, names,
                               sensitivity_order=[names[-1]], bit_policy=BitPolicy(prepared, "size=20KB",
                                                                                     show_progress=False))
    assert fallback.for_layer(names[-1]) is None


def test_space_rules() -> None:
    space = ptq_space({"a_method": ("minmax",)}, bit_budget=True)
    names = [d.name for d in space.dimensions]
    assert "bit_policy" in names and "w_bits" not in names
    with pytest.raises(UserInputError, match="drop the w_bits"):
        ptq_space({"w_bits": (4, 8)}, bit_budget=True)
    with pytest.raises(UserInputError, match="needs a bit budget|under a budget"):
        ptq_space({"bit_policy": ("ilp",)})
    with pytest.raises(UserInputError, match="Unknown bit_policy"):
        ptq_space({"bit_policy": ("smart",)}, bit_budget=True)


def test_impossible_budget_is_refused_before_the_search(example) -> None:
    model, calib, evals, prepared = example
    with pytest.raises(AllocationInfeasibleError, match="avg"):
        tune(model, calib, evals, bit_budget="avg-bits=1", trials=3, prepared=prepared,
             show_progress=False, measure_latency=False)


def test_tune_with_a_bit_budget(example) -> None:
    model, calib, evals, prepared = example
    result = tune(model, calib, evals, dimensions={"a_method": ("minmax", "mse")}, bit_budget="avg-bits=4",
                  strategy="random", trials=4, prepared=prepared, show_progress=False, measure_latency=False)
    assert result.bit_budget == {"avg_bits": 4.0}
    assert result.report()["search"]["bit_budget"] == {"avg_bits": 4.0}
    assert result.point["bit_policy"] in ("ilp", "uniform") and "w_bits" not in result.point
    assert result.label.startswith("W[")
    assert _avg_weight_bits(prepared, result.config) <= 4 + 1e-9
    assert result.best_metric > 90.0


def test_sensitivities_are_measured_with_the_points_weight_scheme(example) -> None:
    *_, prepared = example
    names = prepared.layer_names
    policy = BitPolicy(prepared, "avg-bits=4", weight_bits=(2, 4, 8), show_progress=False)
    for method in ("minmax", "mse", "minmax"):
        point_to_config({"bit_policy": "ilp", "w_method": method}, names, bit_policy=policy)
    assert policy.measurements == 2  # one table per weight range method, reused after
    from quantune.config import WeightQuant

    minmax, mse = policy.table(8, WeightQuant(method="minmax")), policy.table(8, WeightQuant(method="mse"))
    # MSE-clipped 2-bit weights lose less than min/max ones on some layers: the tables differ.
    assert any(mse.value(n, 2, 8) < minmax.value(n, 2, 8) for n in names)
    assert mse.values != minmax.values


def test_budget_below_8bit_edges_searches_without_them(example) -> None:
    model, calib, evals, prepared = example
    sizes = [info.weight_elements for info in prepared.layers]
    edges = sizes[0] + sizes[-1]
    lowest_with_edges = (8 * edges + 2 * (sum(sizes) - edges)) / sum(sizes)
    budget = (2 + lowest_with_edges) / 2  # feasible, but not with 8-bit first and last layers
    assert lowest_with_edges > budget
    with pytest.warns(UserWarning, match="first and last layer at 8 bits"):
        result = tune(model, calib, evals, dimensions={"a_method": ("minmax",)}, bit_budget=f"avg-bits={budget}",
                      strategy="random", trials=3, prepared=prepared, show_progress=False, measure_latency=False)
    assert all(t.state == "COMPLETE" for t in result.trials), [t.to_dict() for t in result.trials]
    assert _avg_weight_bits(prepared, result.config) <= budget + 1e-9
    with pytest.raises(AllocationInfeasibleError, match="avg"):  # asked for explicitly: refused, named
        tune(model, calib, evals, dimensions={"first_last_8bit": (True,)}, bit_budget=f"avg-bits={budget}",
             trials=2, prepared=prepared, show_progress=False, measure_latency=False)
