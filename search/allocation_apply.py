"""Turn an :class:`Allocation` into a :class:`quantune.config.QuantConfig`.

The allocation decides bit widths only; everything else about a layer's quantization
(scheme, granularity, range method, calibration procedure) comes from the base config,
so ``quantune.quantize(model, apply_allocation(allocation, config), calib)`` applies a
mixed-precision allocation on top of an otherwise tuned configuration.
"""

from __future__ import annotations

from dataclasses import replace

from quantune.config import LayerQuantConfig, QuantConfig
from quantune.search.allocation_result import Allocation


def apply_allocation(allocation: Allocation, config: QuantConfig | None = None) -> QuantConfig:
    """Per-layer overrides that set every allocated layer's bit widths.

    Args:
        allocation: The allocation to apply.
        config: The base configuration (default: ``QuantConfig()``, W8A8 everywhere).

    Returns:
        A copy of ``config`` with one exact-name override per layer: ``None`` for float
        layers, else the layer's base config with ``weight.bits = w_bits`` and, when the
        base quantizes activations, ``activation.bits = a_bits`` (a weight-only base
        stays weight-only: the allocator's ``a_bits`` then only fed the BOPs count).

    Raises:
        UserInputError: A width the quantizers do not support (they take 2 to 8 bits).
    """
    config = config if config is not None else QuantConfig()
    overrides: dict[str, LayerQuantConfig | None] = {}
    for choice in allocation.layers:
        if choice.is_float:
            overrides[choice.name] = None
            continue
        base = config.for_layer(choice.name) or LayerQuantConfig()
        activation = base.activation
        if activation is not None:
            activation = replace(activation, bits=choice.a_bits)
        overrides[choice.name] = replace(
            base, weight=replace(base.weight, bits=choice.w_bits), activation=activation)
    return config.with_overrides(overrides)
