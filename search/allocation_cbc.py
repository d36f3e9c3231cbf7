"""A thin, deterministic wrapper around PuLP's CBC for one-choice-per-unit programs.

The program is always: binary ``x[u, c]``, exactly one choice per unit, minimize a
linear objective, subject to rows ``sum(a[u][c] * x[u, c]) <= rhs``. PuLP is imported
lazily so that ``import quantune`` stays cheap.

Numerics: budget rows have coefficients up to ~1e11 (BOPs of a large model). Each row is
shifted by its per-unit minimum (a constant, so the feasible set is unchanged) and divided
by its largest magnitude, so CBC sees coefficients in [0, 1]. Its feasibility tolerance
(~1e-7 relative) can then still admit a solution a few bits over an exact integer limit
of 1e10 bits; the caller verifies every solution exactly and re-solves with that exact
selection cut off (``excluded``), which removes nothing feasible (see ``allocation_ilp``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

from quantune.search.allocation_types import AllocationSolverError

Table = Sequence[Sequence[float]]

#: Fixed CBC options: single thread and fixed seeds make runs reproducible.
_CBC_OPTIONS = ["randomSeed 42", "randomCbcSeed 42"]


@dataclass(frozen=True)
class SolveResult:
    """Outcome of one CBC run.

    Attributes:
        selection: Chosen index per unit, or ``None`` when CBC proved infeasibility.
        proven: Whether CBC proved optimality (``False`` after a time limit).
    """

    selection: list[int] | None
    proven: bool


def _normalized_row(table: Table, rhs: float) -> tuple[list[list[float]], float]:
    """Shift each unit by its minimum coefficient and scale the row into [0, 1]."""
    mins = [min(row) for row in table]
    shifted = [[a - m for a in row] for row, m in zip(table, mins, strict=True)]
    rhs = rhs - math.fsum(mins)
    scale = max([abs(rhs), 1e-300] + [max(row) for row in shifted])
    return [[a / scale for a in row] for row in shifted], rhs / scale


def _cbc(pulp: ModuleType, time_limit_s: float) -> object:
    """CBC from PATH / ``pulp[cbc]`` when present, else the binary bundled with PuLP 2-3
    (deprecated there, hence the silenced warning; PuLP 4 drops it)."""
    settings = {"msg": False, "timeLimit": max(1, math.ceil(time_limit_s)), "gapRel": 0,
                "gapAbs": 0, "threads": 1, "options": list(_CBC_OPTIONS)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        coin = pulp.COIN_CMD(**settings)
        if coin.available():
            return coin
        bundled = pulp.PULP_CBC_CMD(**settings)
    if not bundled.available():
        raise AllocationSolverError("no CBC solver found: pip install 'pulp[cbc]' "
                                    "(or put the cbc binary on PATH), or use policy='greedy'")
    return bundled


def solve_choice_program(
    objective: Table,
    rows: Sequence[tuple[Table, float]],
    *,
    time_limit_s: float,
    excluded: Sequence[Sequence[int]] = (),
) -> SolveResult:
    """Minimize ``objective`` with one choice per unit under ``rows``.

    Args:
        objective: ``objective[u][c]``, the cost of choice ``c`` of unit ``u``. Integer
            tables are passed unscaled so CBC can use an integral cutoff (exact minima).
        rows: ``(a, rhs)`` pairs meaning ``sum(a[u][c] * x[u, c]) <= rhs``.
        time_limit_s: Wall-clock limit for CBC.
        excluded: Selections to forbid (no-good cuts), one choice index per unit.

    Returns:
        The selection (or ``None`` if infeasible) and whether optimality was proven.

    Raises:
        AllocationSolverError: CBC stopped without any feasible solution (time limit)
            or reported an unexpected status.
    """
    import pulp  # lazy: PuLP is only needed when a program is actually solved

    prob = pulp.LpProblem("quantune_bit_allocation", pulp.LpMinimize)
    # PuLP >= 3.3 attaches variables to the model; older releases construct them freely.
    add = getattr(prob, "add_variable", None)
    if add is None:
        def add(name: str, low: float, up: float, cat: str) -> object:
            return pulp.LpVariable(name, low, up, cat=cat)
    x = [[add(f"x_{u}_{c}", 0, 1, cat=pulp.LpBinary) for c in range(len(costs))]
         for u, costs in enumerate(objective)]
    prob += pulp.LpAffineExpression(
        [(v, float(a)) for xs, costs in zip(x, objective, strict=True) for v, a in zip(xs, costs, strict=True)])
    for u, xs in enumerate(x):
        prob += pulp.LpAffineExpression([(v, 1.0) for v in xs]) == 1, f"one_{u}"
    for k, (table, rhs) in enumerate(rows):
        coefs, scaled_rhs = _normalized_row(table, rhs)
        terms = [(v, a) for xs, cs in zip(x, coefs, strict=True) for v, a in zip(xs, cs, strict=True) if a != 0.0]
        prob += pulp.LpAffineExpression(terms) <= scaled_rhs, f"budget_{k}"
    for k, selection in enumerate(excluded):
        # At most n-1 of the n chosen variables: exactly this one selection is cut off.
        prob += (pulp.LpAffineExpression([(x[u][c], 1.0) for u, c in enumerate(selection)])
                 <= len(selection) - 1, f"exclude_{k}")

    prob.solve(_cbc(pulp, time_limit_s))
    if prob.status == pulp.LpStatusInfeasible or prob.sol_status == pulp.LpSolutionInfeasible:
        return SolveResult(None, True)
    if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        raise AllocationSolverError(
            f"CBC found no solution within {time_limit_s:g} s "
            f"(status {pulp.LpStatus.get(prob.status, prob.status)}); "
            "raise solver_time_limit_s or use policy='greedy'")
    # Binary values come back as floats within CBC's integrality tolerance: take the
    # largest per unit rather than testing == 1.
    selection = [max(range(len(xs)), key=lambda c, xs=xs: (xs[c].value() or 0.0, -c))
                 for xs in x]
    return SolveResult(selection, prob.sol_status == pulp.LpSolutionOptimal)
