"""Data model, budget parsing, name matching, result serialization and import cost."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from quantune.errors import ConfigVersionError, QuantuneError, UserInputError
from quantune.search.allocation import (
    FLOAT_BITS,
    POLICIES,
    Allocation,
    AllocationInfeasibleError,
    Budget,
    LayerOption,
    LayerSpec,
    allocate_bits,
)
from quantune.search.allocation_synthetic import synthetic_layers


def test_layer_spec_from_table_parses_keys_and_latency() -> None:
    spec = LayerSpec.from_table("fc", 10, 20, {8: 0.0, (4, 4): 0.3, "float": 0.0, 2: 1.0},
                                latency_ms={8: 1.0, (4, 4): 0.5})
    assert [o.key for o in spec.options] == [(32, 32), (8, 8), (4, 4), (2, 8)]
    assert spec.option((4, 4)).latency_ms == 0.5 and spec.option((2, 8)).latency_ms is None
    assert spec.option((32, 32)).is_float
    with pytest.raises(UserInputError, match="latency given"):
        LayerSpec.from_table("fc", 10, 20, {8: 0.0}, latency_ms={4: 1.0})


@pytest.mark.parametrize("bad", [
    lambda: LayerOption(0), lambda: LayerOption(33), lambda: LayerOption(8, sensitivity=float("nan")),
    lambda: LayerOption(8, latency_ms=-1.0), lambda: LayerSpec("x", -1, 0, (LayerOption(8),)),
    lambda: LayerSpec("x", 1, 1, ()), lambda: LayerSpec("x", 1, 1, (LayerOption(8), LayerOption(8))),
    lambda: Budget(avg_bits=-1), lambda: Budget(size_bytes=float("inf")),
])
def test_invalid_inputs_raise_user_errors(bad) -> None:
    with pytest.raises(UserInputError):
        bad()


def test_errors_are_quantune_errors_and_value_errors() -> None:
    assert issubclass(AllocationInfeasibleError, QuantuneError)
    assert issubclass(AllocationInfeasibleError, ValueError)


@pytest.mark.parametrize(("text", "expected"), [
    ("avg-bits=4.5", Budget(avg_bits=4.5)),
    ("size=2.5MB, latency-ms=3", Budget(size_bytes=2.5e6, latency_ms=3.0)),
    ("size=1KiB,bops=3.2G", Budget(size_bytes=1024.0, bops=3.2e9)),
])
def test_budget_from_string(text: str, expected: Budget) -> None:
    assert Budget.from_string(text) == expected
    assert Budget.from_dict(expected.to_dict()) == expected


@pytest.mark.parametrize("text", ["avg=4", "avg-bits=4MB", "size=", "size=3XB", "bops"])
def test_budget_from_string_rejects_garbage(text: str) -> None:
    with pytest.raises(UserInputError):
        Budget.from_string(text)


def test_budget_accepts_string_and_dict_forms() -> None:
    layers = synthetic_layers(5, seed=1)
    a = allocate_bits(layers, "avg-bits=4")
    assert a == allocate_bits(layers, {"avg_bits": 4}) == allocate_bits(layers, Budget(avg_bits=4))


def test_unknown_layer_names_and_policies_are_errors() -> None:
    layers = synthetic_layers(5, seed=1)
    with pytest.raises(UserInputError, match="did you mean layers.1"):
        allocate_bits(layers, pins={"layers.1x": 8})
    with pytest.raises(UserInputError, match="matches no layer"):
        allocate_bits(layers, groups=[["re:attn\\..*"]])
    with pytest.raises(UserInputError, match="unknown allocation policy"):
        allocate_bits(layers, policy="random")
    with pytest.raises(UserInputError, match="duplicate layer names"):
        allocate_bits(layers + layers[:1])


def test_pin_regex_and_activation_pair() -> None:
    layers = synthetic_layers(6, seed=4, a_bits=(4, 8))
    alloc = allocate_bits(layers, Budget(avg_bits=5), pins={"re:layers\\.[0-2]": (6, 4)})
    assert [alloc.bits[f"layers.{i}"] for i in range(3)] == [(6, 4)] * 3
    with pytest.raises(UserInputError, match="no option"):
        allocate_bits(layers, pins={"layers.0": 5})


def test_group_without_shared_option_is_an_error() -> None:
    layers = [LayerSpec.from_table("q", 10, 10, {8: 0.0, 4: 0.1}),
              LayerSpec.from_table("k", 10, 10, {6: 0.0, 2: 0.1})]
    with pytest.raises(UserInputError, match="share no allowed"):
        allocate_bits(layers, groups=[["q", "k"]])


def test_latency_budget_needs_latency_on_allowed_options() -> None:
    layers = synthetic_layers(4, seed=1)
    with pytest.raises(UserInputError, match="latency"):
        allocate_bits(layers, Budget(latency_ms=100.0), keep_float=["layers.0"])
    no_latency = synthetic_layers(4, seed=1, with_latency=False)
    assert allocate_bits(no_latency, Budget(avg_bits=4)).latency_ms is None


def test_json_round_trip_save_load_and_version(tmp_path) -> None:
    layers = synthetic_layers(7, seed=9, with_float=True, noise=0.2)
    alloc = allocate_bits(layers, Budget(avg_bits=5.25, latency_ms=1e3), keep_float=["layers.3"])
    again = Allocation.from_json(alloc.to_json())
    assert again == alloc and again.summary() == alloc.summary()
    path = alloc.save(tmp_path / "allocation.json")
    assert Allocation.load(path) == alloc
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["summary"]["avg_bits"] == alloc.avg_bits
    assert data["layers"][3]["w_bits"] == FLOAT_BITS and alloc.weight_bits["layers.3"] is None
    with pytest.raises(ConfigVersionError):
        Allocation.from_dict(data | {"version": 99})
    with pytest.raises(UserInputError, match="malformed"):
        Allocation.from_dict({"version": 1, "layers": []})


def test_totals_and_table() -> None:
    layers = [LayerSpec.from_table("conv", 100, 1000, {8: 0.0, 4: 0.5}, latency_ms={8: 2.0, 4: 1.0}),
              LayerSpec.from_table("fc", 300, 300, {8: 0.0, 2: 0.25}, latency_ms={8: 1.0, 2: 0.5})]
    alloc = allocate_bits(layers, Budget(avg_bits=3.5, latency_ms=10))
    assert alloc.bits == {"conv": (8, 8), "fc": (2, 8)}
    assert alloc.size_bytes == (800 + 600) / 8 and alloc.avg_bits == 1400 / 400
    assert alloc.bops == 1000 * 64 + 300 * 16 and alloc.latency_ms == 2.5
    assert alloc.predicted_loss == 0.25 and alloc.binding == ("avg_bits",)
    table = alloc.to_table()
    assert "conv" in table and "fc" in table and "(binding)" in table
    assert "avg_bits" in table and "3.5 / 3.5" in table


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_policy_is_registered_and_labelled(policy: str) -> None:
    alloc = allocate_bits(synthetic_layers(6, seed=2), Budget(avg_bits=6), policy=policy)
    assert alloc.policy == policy and alloc.avg_bits <= 6
    assert alloc.status == ("heuristic" if policy in ("greedy", "uniform") else "optimal")


def test_import_needs_neither_torch_nor_pulp() -> None:
    code = ("import sys, quantune.search.allocation; "
            "print(sorted(m for m in ('torch', 'pulp', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
