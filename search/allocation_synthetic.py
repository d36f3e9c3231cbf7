"""Seeded synthetic sensitivity tables, for tests and solver benchmarks.

Real tables come from measuring a model (see issue 7); these mimic their shape without
one: parameter counts spread over three orders of magnitude, MACs proportional to
parameters times a spatial factor, a loss increase that roughly quarters per extra
weight bit (quantization noise power falls by 4x per bit) scaled by a per-layer
fragility, and a latency that falls with the bit width. ``noise`` perturbs the table so
that it is no longer monotone, which is what measured tables look like and what makes
greedy allocators fail.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from quantune.search.allocation_types import LayerOption, LayerSpec


def synthetic_layers(
    n_layers: int,
    *,
    seed: int = 0,
    w_bits: Sequence[int] = (2, 3, 4, 6, 8),
    a_bits: Sequence[int] = (8,),
    with_float: bool = False,
    with_latency: bool = True,
    noise: float = 0.0,
    max_params: int = 2_000_000,
) -> list[LayerSpec]:
    """Make ``n_layers`` layer specs with plausible sensitivities and costs.

    Args:
        n_layers: Number of layers (named ``layers.0`` ...).
        seed: Seed of the private random generator (results are reproducible).
        w_bits: Candidate weight widths.
        a_bits: Candidate activation widths (every ``(w, a)`` pair becomes an option).
        with_float: Also offer the keep-float option (zero sensitivity).
        with_latency: Give every option a latency estimate.
        noise: Relative multiplicative noise on sensitivities (0 keeps them monotone).
        max_params: Largest parameter count of a layer.

    Returns:
        The layer specs, in network order.
    """
    rng = random.Random(seed)
    layers = []
    for i in range(n_layers):
        params = max(1, int(max_params * 10 ** rng.uniform(-3, 0)))
        macs = params * rng.choice((1, 49, 196, 784))
        fragility = 10 ** rng.uniform(-4, -1)
        base_ms = 1e-6 * macs ** 0.8 + 0.01
        options = []
        for w in w_bits:
            for a in a_bits:
                sens = fragility * (4.0 ** (8 - w) + 2.0 ** (8 - a) - 1.0) / 4.0 ** 6
                sens *= 1.0 + noise * rng.uniform(-1.0, 1.0)
                latency = base_ms * (0.5 + w / 16 + a / 32) if with_latency else None
                options.append(LayerOption(w, a, sens, latency))
        if with_float:
            options.append(LayerOption.float_(0.0, base_ms * 3 if with_latency else None))
        options.sort(key=lambda o: o.key, reverse=True)
        layers.append(LayerSpec(f"layers.{i}", params, macs, tuple(options)))
    return layers

