"""The baseline policies the ILP is benchmarked against: ``greedy`` and ``uniform``.

Both work on the same reduced :class:`AllocationProblem` as the ILP, so they honour the
same pins, ranges, groups and float layers, and need no solver.

- ``greedy`` starts every unit at its most precise choice and repeatedly takes the
  demotion with the smallest sensitivity increase per unit of budget saved, until every
  budget is met (the rule of HAWQ-style and peer-tool greedy allocators).
- ``uniform`` gives every layer the same weight width, the first and last layer 8 bits,
  and takes the highest width that meets the budget.
"""

from __future__ import annotations

from collections.abc import Sequence

from quantune.search.allocation_budget import BudgetRow
from quantune.search.allocation_problem import AllocationProblem, Unit
from quantune.search.allocation_types import FLOAT_BITS, AllocationInfeasibleError

#: Weight width of the first and last layer under the ``uniform`` policy.
UNIFORM_EDGE_BITS = 8


def _stuck(policy: str, problem: AllocationProblem, violated: Sequence[BudgetRow]
           ) -> AllocationInfeasibleError:
    names = ", ".join(f"{r.name}={r.requested:g}" for r in violated)
    return AllocationInfeasibleError(
        f"policy {policy!r} cannot meet the budget {names}; each budget is reachable alone, "
        "so try policy='ilp', which finds an allocation whenever one exists",
        constraint=violated[0].name, requested=violated[0].requested)


def _saving(problem: AllocationProblem, unit: Unit, old: int, new: int,
            violated: Sequence[BudgetRow]) -> float:
    """Budget saved by a demotion, summed over the violated rows, each normalized by its
    limit so that bytes, BOPs and milliseconds add up on one scale."""
    total = 0.0
    for row in violated:
        delta = unit.choices[old].resource(row.resource) - unit.choices[new].resource(row.resource)
        total += delta / max(abs(row.limit), 1e-12)
    return total


def solve_greedy(problem: AllocationProblem) -> tuple[list[int], tuple[str, ...]]:
    """Greedy demotion from the most precise allocation.

    Returns:
        ``(selection, binding)``: binding are the budgets still violated before the
        last demotion.

    Raises:
        AllocationInfeasibleError: No demotion saves budget any more.
    """
    selection = [0] * len(problem.units)
    violated = problem.violated(selection)
    binding: tuple[str, ...] = ()
    while violated:
        best: tuple[float, int, int] | None = None
        for u, unit in enumerate(problem.units):
            current = selection[u]
            for new in range(current + 1, len(unit.choices)):
                saved = _saving(problem, unit, current, new, violated)
                if saved <= 0:
                    continue
                cost = unit.choices[new].sensitivity - unit.choices[current].sensitivity
                candidate = (cost / saved, u, new)
                # Strict < keeps the first unit and the smallest step on exact ties.
                if best is None or candidate[0] < best[0]:
                    best = candidate
        if best is None:
            raise _stuck("greedy", problem, violated)
        binding = tuple(r.name for r in violated)
        selection[best[1]] = best[2]
        violated = problem.violated(selection)
    return selection, binding


def _uniform_choice(unit: Unit, target: int) -> int:
    """The unit's choice closest to ``target`` weight bits: the target itself (with the
    most activation bits), else the widest below it, else the narrowest above it; float
    only when nothing else is allowed."""
    quantized = [c for c, ch in enumerate(unit.choices) if ch.key[0] != FLOAT_BITS]
    if not quantized:
        return 0
    # Choices are sorted by descending (w_bits, a_bits): the first hit is the best.
    for c in quantized:
        if unit.choices[c].key[0] <= target:
            return c
    return quantized[-1]


def solve_uniform(problem: AllocationProblem, edge_bits: int | None = UNIFORM_EDGE_BITS
                  ) -> tuple[list[int], tuple[str, ...]]:
    """Same weight width everywhere; the first and last layer at ``edge_bits``.

    Tries every candidate width from the highest down and keeps the first that meets
    the budget; if none does with the edges at ``edge_bits``, the edges follow the
    width too (a tiny model cannot afford two 8-bit layers under a low budget).

    Returns:
        ``(selection, binding)``: binding are the budgets the next higher width broke.

    Raises:
        AllocationInfeasibleError: Even the lowest width breaks the budget.
    """
    widths = sorted({ch.key[0] for u in problem.units for ch in u.choices
                     if ch.key[0] != FLOAT_BITS}, reverse=True) or [FLOAT_BITS]
    last = len(problem.layers) - 1
    edges = {u for u, unit in enumerate(problem.units) if 0 in unit.layers or last in unit.layers}
    binding: tuple[str, ...] = ()
    violated: list[BudgetRow] = []
    attempts = [(w, edge_bits) for w in widths] + ([(w, None) for w in widths] if edge_bits else [])
    for width, edge in attempts:
        selection = [_uniform_choice(unit, edge if u in edges and edge else width)
                     for u, unit in enumerate(problem.units)]
        violated = problem.violated(selection)
        if not violated:
            return selection, binding
        binding = tuple(r.name for r in violated)
    raise _stuck("uniform", problem, violated)
