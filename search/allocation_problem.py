"""Resolve layers, pins, ranges, groups and float layers into a choice problem.

Every policy (ILP, greedy, uniform, exhaustive) works on the same reduced form: layers
that must share a width are merged into one *unit* whose choices carry the summed
sensitivity and resources of its members, and each unit's choices are already filtered
by pins, ranges and keep-float. A solution is then simply one choice index per unit, and
every budget is a separable sum over units, which makes the smallest feasible value of a
single budget an exact sum of per-unit minima.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from quantune.errors import UserInputError
from quantune.search.allocation_budget import Budget, BudgetRow, budget_rows
from quantune.search.allocation_names import match_names
from quantune.search.allocation_types import (
    FLOAT_BITS,
    AllocationInfeasibleError,
    LayerOption,
    LayerSpec,
    parse_bits_key,
)

PinValue = int | str | tuple[int, int] | None
BitRange = tuple[int | None, int | None]


@dataclass(frozen=True)
class UnitChoice:
    """One shared ``(w_bits, a_bits)`` choice of a unit, with its summed costs."""

    key: tuple[int, int]
    sensitivity: float
    weight_bits: int
    bops: int
    latency_ms: float | None

    def resource(self, name: str) -> float:
        """The unit's usage of ``"weight_bits"``, ``"bops"`` or ``"latency_ms"``."""
        value = getattr(self, name)
        if value is None:
            raise UserInputError(f"option {self.key} has no latency; a latency budget "
                                 "needs latency_ms on every allowed option")
        return value


@dataclass(frozen=True)
class Unit:
    """Layers (indices into the problem's layers) that take the same choice."""

    layers: tuple[int, ...]
    choices: tuple[UnitChoice, ...]


@dataclass(frozen=True)
class AllocationProblem:
    """The reduced problem every allocation policy solves.

    Attributes:
        layers: The layers, in the caller's order.
        options: Per layer, its options keyed by ``(w_bits, a_bits)`` (with a synthesized
            float option for keep-float layers that had none).
        units: Groups of layers sharing a choice; choices sorted by descending bits.
        budget: The user's budget.
        rows: The budget as exact resource limits.
    """

    layers: tuple[LayerSpec, ...]
    options: tuple[Mapping[tuple[int, int], LayerOption], ...]
    units: tuple[Unit, ...]
    budget: Budget
    rows: tuple[BudgetRow, ...]

    def used(self, selection: Sequence[int], resource: str) -> float:
        """Total of a resource for a selection (one choice index per unit)."""
        return sum(u.choices[c].resource(resource) for u, c in zip(self.units, selection, strict=True))

    def loss(self, selection: Sequence[int]) -> float:
        """Summed sensitivity of a selection."""
        return math.fsum(u.choices[c].sensitivity for u, c in zip(self.units, selection, strict=True))

    def violated(self, selection: Sequence[int]) -> list[BudgetRow]:
        """The budget rows a selection exceeds."""
        return [r for r in self.rows if not r.satisfied(self.used(selection, r.resource))]

    def min_resource(self, resource: str) -> float:
        """Smallest reachable total of a resource, ignoring the other budgets."""
        return sum(min(ch.resource(resource) for ch in u.choices) for u in self.units)

    def layer_options(self, selection: Sequence[int]) -> list[LayerOption]:
        """The chosen option of every layer, in layer order."""
        chosen: list[LayerOption | None] = [None] * len(self.layers)
        for unit, c in zip(self.units, selection, strict=True):
            for i in unit.layers:
                chosen[i] = self.options[i][unit.choices[c].key]
        return [o for o in chosen if o is not None]

    def selection_of(self, cells: Mapping[str, tuple[int, int]]) -> list[int]:
        """The selection (one choice index per unit) that gives each layer its cell in
        ``cells`` (``{name: (w_bits, a_bits)}``; a layer left out is float).

        Raises:
            UserInputError: A layer's cell is not among its unit's choices.
        """
        selection = []
        for unit in self.units:
            name = self.layers[unit.layers[0]].name
            key = cells.get(name, (FLOAT_BITS, FLOAT_BITS))
            index = next((c for c, ch in enumerate(unit.choices) if ch.key == key), None)
            if index is None:
                raise UserInputError(f"{name}: {key} is not one of its allowed choices "
                                     f"{[ch.key for ch in unit.choices]}")
            selection.append(index)
        return selection

    def check_each_budget(self) -> None:
        """Raise if a single budget is below its smallest reachable value.

        Raises:
            AllocationInfeasibleError: Naming the first such budget and its minimum.
        """
        for row in self.rows:
            minimum = self.min_resource(row.resource)
            if not row.satisfied(minimum):
                smallest = row.min_budget_for(minimum)
                raise AllocationInfeasibleError(
                    f"budget {row.name}={row.requested:g} is infeasible: the smallest "
                    f"feasible {row.name} under the pins, ranges, groups and float layers "
                    f"is {smallest!r}; raise the budget to at least that, or relax the pins",
                    constraint=row.name, requested=row.requested, min_feasible=smallest)


def _allowed_options(
    layers: Sequence[LayerSpec],
    pins: Mapping[str, PinValue],
    bit_ranges: Mapping[str, BitRange],
    keep_float: Iterable[str],
) -> list[dict[tuple[int, int], LayerOption]]:
    """Per layer, the options that survive keep-float, pins and ranges."""
    names = [layer.name for layer in layers]
    allowed = [{o.key: o for o in layer.options} for layer in layers]
    for i in sorted({i for pattern in keep_float for i in match_names(pattern, names)}):
        floats = {k: o for k, o in allowed[i].items() if o.is_float}
        allowed[i] = floats or {(FLOAT_BITS, FLOAT_BITS): LayerOption.float_()}
    for pattern, value in pins.items():
        w_bits, a_bits = parse_bits_key(value, default_a_bits=None)
        for i in match_names(pattern, names):
            allowed[i] = {k: o for k, o in allowed[i].items()
                          if k[0] == w_bits and a_bits in (None, k[1])}
            if not allowed[i]:
                raise UserInputError(f"pin {pattern!r}={value!r} leaves {names[i]} no option; "
                                     "it conflicts with keep_float or the layer lacks it")
    for pattern, (low, high) in bit_ranges.items():
        lo, hi = (1 if low is None else low), (FLOAT_BITS if high is None else high)
        for i in match_names(pattern, names):
            allowed[i] = {k: o for k, o in allowed[i].items() if lo <= k[0] <= hi}
            if not allowed[i]:
                raise UserInputError(f"bit range {pattern!r}=({low}, {high}) leaves "
                                     f"{names[i]} no option (after pins and keep_float)")
    return allowed


def _merge_groups(n_layers: int, names: list[str], groups: Iterable[Iterable[str]]
                  ) -> list[tuple[int, ...]]:
    """Union overlapping groups (sharing is transitive); singletons for the rest."""
    parent = list(range(n_layers))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for group in groups:
        members = [i for pattern in group for i in match_names(pattern, names)]
        for i in members[1:]:
            parent[find(i)] = find(members[0])
    merged: dict[int, list[int]] = {}
    for i in range(n_layers):
        merged.setdefault(find(i), []).append(i)
    return sorted((tuple(m) for m in merged.values()), key=lambda m: m[0])


def _make_unit(members: tuple[int, ...], layers: Sequence[LayerSpec],
               allowed: Sequence[Mapping[tuple[int, int], LayerOption]]) -> Unit:
    keys = set.intersection(*(set(allowed[i]) for i in members))
    if not keys:
        raise UserInputError(
            "grouped layers share no allowed (w_bits, a_bits) option: "
            + ", ".join(f"{layers[i].name}: {sorted(allowed[i])}" for i in members))
    choices = []
    for key in sorted(keys, reverse=True):
        opts = [allowed[i][key] for i in members]
        lat = [o.latency_ms for o in opts]
        choices.append(UnitChoice(
            key=key,
            sensitivity=math.fsum(o.sensitivity for o in opts),
            weight_bits=sum(layers[i].params * key[0] for i in members),
            bops=sum(layers[i].macs * key[0] * key[1] for i in members),
            latency_ms=None if None in lat else sum(lat)))  # type: ignore[arg-type]
    return Unit(members, tuple(choices))


def build_problem(
    layers: Sequence[LayerSpec],
    budget: Budget,
    *,
    pins: Mapping[str, PinValue] | None = None,
    bit_ranges: Mapping[str, BitRange] | None = None,
    groups: Iterable[Iterable[str]] | None = None,
    keep_float: Iterable[str] | None = None,
) -> AllocationProblem:
    """Validate the inputs and reduce them to units of shared choices.

    Names in ``pins``, ``bit_ranges``, ``groups`` and ``keep_float`` are exact layer
    names or ``"re:PATTERN"`` (full match); a name that matches no layer is an error.

    Raises:
        UserInputError: Unknown or duplicate names, or restrictions that leave a layer
            or a group without any option.
    """
    layers = tuple(layers)
    if not layers:
        raise UserInputError("allocate_bits needs at least one layer")
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        raise UserInputError(f"duplicate layer names: {sorted({n for n in names if names.count(n) > 1})}")
    allowed = _allowed_options(layers, pins or {}, bit_ranges or {}, keep_float or ())
    units = tuple(_make_unit(m, layers, allowed)
                  for m in _merge_groups(len(layers), names, groups or ()))
    rows = budget_rows(budget, sum(layer.params for layer in layers))
    if any(r.resource == "latency_ms" for r in rows):
        for unit in units:
            for choice in unit.choices:
                if choice.latency_ms is None:
                    raise UserInputError(
                        f"a latency budget needs latency_ms for option {choice.key} of "
                        + ", ".join(names[i] for i in unit.layers))
    return AllocationProblem(layers, tuple(allowed), units, budget, rows)
