"""The ``ilp`` policy: exact minimum-loss allocation with CBC, plus diagnostics.

Steps, all on the reduced :class:`AllocationProblem`:

1. every budget alone is checked against its exact minimum (cheap, no solver);
2. CBC minimizes the summed sensitivity under all budgets;
3. ties are broken deterministically by a second solve that keeps the loss at its
   optimum and prefers more bits (lower choice rank) everywhere;
4. every solution is verified in exact arithmetic; a selection CBC accepted only
   within its tolerance is cut off and the program solved again;
5. a budget is reported *binding* when dropping it lowers the optimal loss.

When the budgets are only jointly infeasible, each budget's smallest value compatible
with all the others is computed by minimizing that resource under the others.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from quantune.search.allocation_budget import BudgetRow
from quantune.search.allocation_cbc import SolveResult, Table, solve_choice_program
from quantune.search.allocation_problem import AllocationProblem
from quantune.search.allocation_types import AllocationInfeasibleError, AllocationSolverError

#: Objective coefficients are scaled so the largest per-unit loss spread is this big:
#: CBC's absolute tolerances (~1e-6) then resolve loss differences down to ~1e-12 of it.
_LOSS_SCALE = 1e6
#: Relative slack on the optimal loss kept by the tie-break solve.
_TIE_RTOL = 1e-9
#: How many over-budget answers (within CBC's tolerance) are cut off before giving up.
_MAX_CUTS = 50


def _loss_table(problem: AllocationProblem) -> list[list[float]]:
    """Sensitivities shifted per unit to start at 0 and scaled to ``_LOSS_SCALE``."""
    shifted = [[ch.sensitivity - min(c.sensitivity for c in u.choices) for ch in u.choices]
               for u in problem.units]
    spread = max(max(row) for row in shifted)
    scale = _LOSS_SCALE / spread if spread > 0 else 1.0
    return [[a * scale for a in row] for row in shifted]


def _resource_table(problem: AllocationProblem, resource: str) -> list[list[float]]:
    return [[ch.resource(resource) for ch in u.choices] for u in problem.units]


def _solve_verified(
    problem: AllocationProblem,
    objective: Table,
    rows: Sequence[BudgetRow],
    time_limit_s: float,
    extra: Sequence[tuple[Table, float]] = (),
    known: Sequence[Sequence[int]] = (),
) -> SolveResult:
    """Solve, then cut off each answer the exact check rejects and solve again.

    CBC's tolerance can only loosen a row, so every truly feasible selection stays in
    its feasible set; cutting off exactly the rejected selections therefore converges to
    the true optimum (usually after zero or one extra solve).
    """
    program = [*((_resource_table(problem, r.resource), r.limit) for r in rows), *extra]
    excluded: list[list[int]] = [list(k) for k in known]
    for _ in range(_MAX_CUTS + 1):
        result = solve_choice_program(objective, program, time_limit_s=time_limit_s,
                                      excluded=excluded)
        if result.selection is None:
            return result
        if all(r.satisfied(problem.used(result.selection, r.resource)) for r in rows):
            return result
        excluded.append(result.selection)
    raise AllocationSolverError(
        f"CBC returned {_MAX_CUTS + 1} selections over budget within its tolerance; "
        "this is a numerical problem, please report it (policy='greedy' avoids CBC)")


def _rank_table(problem: AllocationProblem) -> list[list[float]]:
    """Choice rank per unit (0 = most bits): minimizing it prefers more precision."""
    return [[float(c) for c in range(len(u.choices))] for u in problem.units]


def _unconstrained(problem: AllocationProblem) -> list[int]:
    """Closed form with no budget rows: the lowest loss per unit, most bits on ties."""
    return [min(range(len(u.choices)), key=lambda c, u=u: (u.choices[c].sensitivity, c))
            for u in problem.units]


def _min_loss(problem: AllocationProblem, rows: Sequence[BudgetRow], time_limit_s: float
              ) -> SolveResult:
    if not rows:
        return SolveResult(_unconstrained(problem), True)
    return _solve_verified(problem, _loss_table(problem), rows, time_limit_s)


def solve_ilp(problem: AllocationProblem, time_limit_s: float
              ) -> tuple[list[int], bool, tuple[str, ...]]:
    """Minimum-loss selection under every budget.

    Returns:
        ``(selection, proven_optimal, binding budget names)``.

    Raises:
        AllocationInfeasibleError: No selection meets the budgets; names the budget to
            relax and its smallest feasible value.
        AllocationSolverError: CBC returned nothing usable.
    """
    problem.check_each_budget()
    first = _min_loss(problem, problem.rows, time_limit_s)
    if first.selection is None:
        raise diagnose_joint_infeasibility(problem, time_limit_s)
    selection, proven = first.selection, first.proven
    if problem.rows:
        # Tie-break: keep the optimal loss (within _TIE_RTOL) and prefer more bits.
        loss_table = _loss_table(problem)
        best = math.fsum(row[c] for row, c in zip(loss_table, selection, strict=True))
        cap = best + _TIE_RTOL * max(1.0, best)
        second = _solve_verified(problem, _rank_table(problem), problem.rows, time_limit_s,
                                 extra=[(loss_table, cap)])
        if second.selection is not None and problem.loss(second.selection) <= (
                problem.loss(selection) + _TIE_RTOL * max(1.0, abs(problem.loss(selection)))):
            selection, proven = second.selection, proven and second.proven
    loss = problem.loss(selection)
    binding = []
    for row in problem.rows:
        others = [r for r in problem.rows if r is not row]
        relaxed = _min_loss(problem, others, time_limit_s).selection
        if relaxed is not None and problem.loss(relaxed) < loss - 1e-9 * max(1.0, abs(loss)):
            binding.append(row.name)
    return selection, proven, tuple(binding)


def next_best_ilp(problem: AllocationProblem, known: Sequence[Sequence[int]], time_limit_s: float
                  ) -> list[int] | None:
    """The least-loss selection under every budget other than the ``known`` ones (no-good
    cuts), or ``None`` when the budgets admit no other selection. Calling it repeatedly
    enumerates the selections in order of predicted loss."""
    result = _solve_verified(problem, _loss_table(problem), problem.rows, time_limit_s, known=known)
    return result.selection


def solve_near(problem: AllocationProblem, selection: Sequence[int], max_changes: int,
               time_limit_s: float) -> list[int] | None:
    """The least-loss selection under every budget that changes at most ``max_changes``
    units of ``selection`` (a trust region around it), or ``None`` when none is feasible."""
    if max_changes < 0:
        raise ValueError(f"max_changes must be >= 0, got {max_changes}")
    moved = [[0.0 if c == current else 1.0 for c in range(len(u.choices))]
             for u, current in zip(problem.units, selection, strict=True)]
    result = _solve_verified(problem, _loss_table(problem), problem.rows, time_limit_s,
                             extra=[(moved, float(max_changes))])
    return result.selection


def min_feasible_value(problem: AllocationProblem, row: BudgetRow, time_limit_s: float
                       ) -> float | None:
    """Smallest value of one budget that is feasible with every other budget kept.

    Returns ``None`` when the other budgets are infeasible on their own.
    """
    others = [r for r in problem.rows if r is not row]
    table = _resource_table(problem, row.resource)
    # Integer resources stay unscaled (CBC then prunes with an integral cutoff, so the
    # minimum is exact); only the per-unit constant is removed.
    objective = [[a - min(t) for a in t] for t in table]
    result = _solve_verified(problem, objective, others, time_limit_s)
    if result.selection is None:
        return None
    return row.min_budget_for(problem.used(result.selection, row.resource))


def diagnose_joint_infeasibility(problem: AllocationProblem, time_limit_s: float
                                 ) -> AllocationInfeasibleError:
    """Build the error for budgets that are feasible one by one but not together."""
    asked = ", ".join(f"{r.name}={r.requested:g}" for r in problem.rows)
    fixes = []
    for row in problem.rows:
        value = min_feasible_value(problem, row, time_limit_s)
        if value is not None:
            fixes.append((row, value))
    if not fixes:
        return AllocationInfeasibleError(
            f"budgets {asked} cannot be met together, and no single one can be relaxed "
            "alone to fix it; relax several budgets")
    row, value = fixes[0]
    alternatives = "; ".join(f"or raise {r.name} to at least {v!r}" for r, v in fixes[1:])
    return AllocationInfeasibleError(
        f"budgets {asked} cannot be met together: with the other budgets kept, the "
        f"smallest feasible {row.name} is {value!r}" + (f" ({alternatives})" if alternatives else ""),
        constraint=row.name, requested=row.requested, min_feasible=value)
