"""Applying an allocation to a QuantConfig."""

from __future__ import annotations

import pytest

from quantune.config import ActQuant, LayerQuantConfig, QuantConfig, WeightQuant
from quantune.errors import UserInputError
from quantune.search.allocation import Budget, LayerSpec, allocate_bits
from quantune.search.allocation_apply import apply_allocation


def _allocation():
    layers = [LayerSpec.from_table("stem", 100, 10, {8: 0.0, 4: 1.0}),
              LayerSpec.from_table("body", 1000, 10, {8: 0.0, (4, 4): 0.2, 4: 0.1}),
              LayerSpec.from_table("head", 100, 10, {8: 0.5, "float": 0.0})]
    return allocate_bits(layers, Budget(avg_bits=7))


def test_bits_override_and_other_settings_are_kept() -> None:
    alloc = _allocation()
    assert alloc.bits == {"stem": (8, 8), "body": (4, 8), "head": (32, 32)}
    base = QuantConfig(default=LayerQuantConfig(
        WeightQuant(bits=8, granularity="per_tensor"), ActQuant(bits=8, method="entropy")))
    config = apply_allocation(alloc, base)
    body = config.for_layer("body")
    assert body.weight.bits == 4 and body.weight.granularity == "per_tensor"
    assert body.activation.bits == 8 and body.activation.method == "entropy"
    assert config.for_layer("head") is None and config.for_layer("stem").weight.bits == 8
    assert QuantConfig.from_json(config.to_json()) == config


def test_weight_only_base_stays_weight_only() -> None:
    base = QuantConfig(default=LayerQuantConfig(WeightQuant(bits=8), None))
    config = apply_allocation(_allocation(), base)
    assert config.for_layer("body").activation is None
    assert apply_allocation(_allocation()).for_layer("body").short_name == "W4A8"


def test_unsupported_width_is_a_user_error() -> None:
    alloc = allocate_bits([LayerSpec.from_table("x", 10, 10, {16: 0.0})])
    with pytest.raises(UserInputError):
        apply_allocation(alloc)
