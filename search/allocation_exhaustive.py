"""The ``exhaustive`` policy: enumerate every selection of a small problem.

It is the oracle the ILP is tested against, and a solver-free exact policy for tiny
problems. One pass over all selections yields the optimum, the binding budgets (the
optimum with each budget dropped) and, when nothing is feasible, each budget's smallest
value compatible with the others -- the same three answers the ILP gives.
"""

from __future__ import annotations

import itertools
import math

from quantune.errors import UserInputError
from quantune.search.allocation_problem import AllocationProblem
from quantune.search.allocation_types import AllocationInfeasibleError

#: Largest number of selections ``exhaustive`` agrees to enumerate.
MAX_SELECTIONS = 200_000


def solve_exhaustive(problem: AllocationProblem, max_selections: int = MAX_SELECTIONS
                     ) -> tuple[list[int], tuple[str, ...]]:
    """Exact optimum by enumeration; ties go to more bits (lower choice ranks).

    Returns:
        ``(selection, binding)``.

    Raises:
        UserInputError: The problem has more than ``max_selections`` selections.
        AllocationInfeasibleError: No selection meets the budget; names the first
            budget that can be relaxed alone and its smallest feasible value.
    """
    count = math.prod(len(u.choices) for u in problem.units)
    if count > max_selections:
        raise UserInputError(f"exhaustive allocation would enumerate {count:,} selections "
                             f"(limit {max_selections:,}); use policy='ilp'")
    problem.check_each_budget()
    rows = problem.rows
    best: tuple[float, int] | None = None
    best_selection: list[int] = []
    best_without: dict[str, float] = {}  # optimum loss with one budget dropped
    min_used: dict[str, float] = {}  # smallest resource use compatible with the others
    for combo in itertools.product(*(range(len(u.choices)) for u in problem.units)):
        used = {r.name: problem.used(combo, r.resource) for r in rows}
        over = [r for r in rows if not r.satisfied(used[r.name])]
        if len(over) > 1:
            continue
        loss = problem.loss(combo)
        for r in rows if not over else over:
            if loss < best_without.get(r.name, math.inf):
                best_without[r.name] = loss
            if used[r.name] < min_used.get(r.name, math.inf):
                min_used[r.name] = used[r.name]
        key = (loss, sum(combo))
        if not over and (best is None or key < best):
            best, best_selection = key, list(combo)
    if best is None:
        raise _infeasible(problem, min_used)
    tol = 1e-9 * max(1.0, abs(best[0]))
    binding = tuple(r.name for r in rows if best_without.get(r.name, math.inf) < best[0] - tol)
    return best_selection, binding


def _infeasible(problem: AllocationProblem, min_used: dict[str, float]
                ) -> AllocationInfeasibleError:
    asked = ", ".join(f"{r.name}={r.requested:g}" for r in problem.rows)
    fixes = [(r, r.min_budget_for(min_used[r.name])) for r in problem.rows if r.name in min_used]
    if not fixes:
        return AllocationInfeasibleError(
            f"budgets {asked} cannot be met together, and no single one can be relaxed "
            "alone to fix it; relax several budgets")
    row, value = fixes[0]
    return AllocationInfeasibleError(
        f"budgets {asked} cannot be met together: with the other budgets kept, the "
        f"smallest feasible {row.name} is {value!r}",
        constraint=row.name, requested=row.requested, min_feasible=value)
