"""An independent brute-force oracle for the bit allocator, and its own sanity tests.

The oracle enumerates raw per-layer options directly from the ``LayerSpec`` list and
checks every rule on its own (no shared code with the library's problem reduction), so
the ILP is compared with something that could not share its bugs. Other allocation test
files load this module by path (tests are not a package).
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from fractions import Fraction

from quantune.search.allocation import Allocation, Budget, LayerOption, LayerSpec, allocate_bits

FLOAT = 32


@dataclass
class Instance:
    """A random allocation problem with its restrictions."""

    layers: list[LayerSpec]
    budget: Budget = field(default_factory=Budget)
    pins: dict = field(default_factory=dict)
    bit_ranges: dict = field(default_factory=dict)
    groups: list = field(default_factory=list)
    keep_float: list = field(default_factory=list)

    def kwargs(self) -> dict:
        return {"pins": self.pins, "bit_ranges": self.bit_ranges, "groups": self.groups,
                "keep_float": self.keep_float}


def allowed(inst: Instance, layer: LayerSpec) -> list[LayerOption]:
    """A layer's options after keep-float, pins and ranges (exact names only)."""
    opts = list(layer.options)
    if layer.name in inst.keep_float:
        opts = [o for o in opts if o.w_bits == FLOAT] or [LayerOption.float_()]
    if layer.name in inst.pins:
        pin = inst.pins[layer.name]
        opts = [o for o in opts if (o.w_bits, o.a_bits) == pin or o.w_bits == pin]
    lo, hi = inst.bit_ranges.get(layer.name, (None, None))
    return [o for o in opts if (lo is None or o.w_bits >= lo) and (hi is None or o.w_bits <= hi)]


def totals(layers: list[LayerSpec], combo: tuple[LayerOption, ...]) -> dict[str, float]:
    bits = sum(layer.params * o.w_bits for layer, o in zip(layers, combo, strict=True))
    lat = [o.latency_ms for o in combo]
    return {
        "weight_bits": bits,
        "bops": sum(layer.macs * o.w_bits * o.a_bits for layer, o in zip(layers, combo, strict=True)),
        "latency_ms": None if None in lat else sum(lat),
        "loss": math.fsum(o.sensitivity for o in combo),
    }


def within(budget: Budget, total_params: int, t: dict[str, float], skip: str = "") -> bool:
    """Exact budget check of totals ``t`` (latency with a 1e-9 relative tolerance)."""
    if skip != "size_bytes" and budget.size_bytes is not None and (
            t["weight_bits"] > Fraction(budget.size_bytes) * 8):
        return False
    if skip != "avg_bits" and budget.avg_bits is not None and (
            t["weight_bits"] > Fraction(budget.avg_bits) * total_params):
        return False
    if skip != "bops" and budget.bops is not None and t["bops"] > Fraction(budget.bops):
        return False
    if skip != "latency_ms" and budget.latency_ms is not None and (
            t["latency_ms"] > budget.latency_ms * (1 + 1e-9)):
        return False
    return True


def combos(inst: Instance):
    """Every raw selection honouring keep-float, pins, ranges and groups."""
    index = {layer.name: i for i, layer in enumerate(inst.layers)}
    for combo in itertools.product(*(allowed(inst, layer) for layer in inst.layers)):
        if all(len({(combo[index[n]].w_bits, combo[index[n]].a_bits) for n in g}) == 1
               for g in inst.groups):
            yield combo


def brute_force(inst: Instance) -> float | None:
    """The optimal loss, or ``None`` when nothing is feasible."""
    total = sum(layer.params for layer in inst.layers)
    losses = [t["loss"] for t in (totals(inst.layers, c) for c in combos(inst))
              if within(inst.budget, total, t)]
    return min(losses) if losses else None


def satisfies(inst: Instance, alloc: Allocation) -> None:
    """Assert that an allocation meets every rule of the instance, checked from scratch."""
    by_name = {c.name: c for c in alloc.layers}
    assert [c.name for c in alloc.layers] == [layer.name for layer in inst.layers]
    combo = []
    for layer in inst.layers:
        c = by_name[layer.name]
        option = next(o for o in allowed(inst, layer) if (o.w_bits, o.a_bits) == (c.w_bits, c.a_bits))
        assert option.sensitivity == c.sensitivity
        combo.append(option)
    for g in inst.groups:
        assert len({alloc.bits[n] for n in g}) == 1, g
    for name in inst.keep_float:
        assert by_name[name].is_float
    t = totals(inst.layers, tuple(combo))
    assert within(inst.budget, sum(layer.params for layer in inst.layers), t)
    assert math.isclose(alloc.predicted_loss, t["loss"], rel_tol=1e-12, abs_tol=1e-15)


def random_instance(seed: int, *, restrictions: bool = True) -> Instance:
    """3-6 layers, 2-4 weight widths, optional A4/float options, random budgets."""
    rng = random.Random(seed)
    layers = []
    for i in range(rng.randint(3, 6)):
        keys = [(w, 8) for w in rng.sample([2, 3, 4, 6, 8], rng.randint(2, 4))]
        if rng.random() < 0.3:
            keys.append((rng.choice([4, 8]), 4))
        if rng.random() < 0.3:
            keys.append((FLOAT, FLOAT))
        options = tuple(LayerOption(w, a, rng.uniform(-0.05, 1.0), rng.uniform(0.1, 2.0))
                        for w, a in sorted(set(keys), reverse=True))
        layers.append(LayerSpec(f"l{i}", rng.randint(1, 5000), rng.randint(1, 10**6), options))
    inst = Instance(layers)
    names = [layer.name for layer in layers]
    if restrictions:
        if rng.random() < 0.4:
            layer = rng.choice(layers)
            inst.pins[layer.name] = rng.choice(layer.options).w_bits
        if rng.random() < 0.4:
            inst.bit_ranges[rng.choice(names)] = (rng.choice([None, 3]), rng.choice([None, 6, 8]))
        if rng.random() < 0.4:
            inst.groups.append(rng.sample(names, 2))
        if rng.random() < 0.3:
            inst.keep_float.append(rng.choice([n for n in names if n not in inst.pins]))
    feasible = list(combos(inst))
    values: dict[str, float] = {}
    if feasible:
        all_t = [totals(layers, c) for c in feasible]
        kinds = ["size_bytes", "avg_bits", "bops"]
        if all(t["latency_ms"] is not None for t in all_t):  # a synthesized float has none
            kinds.append("latency_ms")
        for name in rng.sample(kinds, rng.randint(1, 3)):
            key = {"size_bytes": "weight_bits", "avg_bits": "weight_bits"}.get(name, name)
            lo, hi = min(t[key] for t in all_t), max(t[key] for t in all_t)
            value = lo + rng.uniform(-0.1, 1.0) * (hi - lo)
            scale = {"size_bytes": 1 / 8, "avg_bits": 1 / sum(x.params for x in layers)}
            values[name] = max(0.0, value * scale.get(name, 1.0))
    inst.budget = Budget(**values)
    return inst


def test_oracle_matches_a_hand_solved_problem() -> None:
    layers = [LayerSpec.from_table("a", 100, 10, {8: 0.0, 4: 0.5, 2: 2.0}),
              LayerSpec.from_table("b", 300, 10, {8: 0.0, 4: 0.1, 2: 1.0})]
    # avg 5 over 400 weights = 2000 bits: a@8 + b@4 = 2000 exactly (loss 0.1) beats
    # a@4 + b@4 (loss 0.6); a@8 + b@8 = 3200 bits is over.
    inst = Instance(layers, Budget(avg_bits=5))
    assert brute_force(inst) == 0.1
    alloc = allocate_bits(layers, inst.budget)
    assert alloc.bits == {"a": (8, 8), "b": (4, 8)}
    satisfies(inst, alloc)
    assert brute_force(Instance(layers, Budget(avg_bits=1.99))) is None


def test_random_instances_cover_feasible_and_infeasible_cases() -> None:
    outcomes = [brute_force(random_instance(seed)) is None for seed in range(40)]
    assert any(outcomes) and not all(outcomes)
