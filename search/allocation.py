"""Per-layer bit allocation over plain data: the public entry point.

``allocate_bits`` takes a measured sensitivity table (one :class:`LayerSpec` per layer,
one :class:`LayerOption` per candidate width) and a :class:`Budget`, and returns the
:class:`Allocation` of least summed sensitivity that meets the budget, the pins, the
per-layer bit ranges, the groups of layers sharing a width and the float layers.

Example:
    >>> from quantune.search.allocation import Budget, LayerSpec, allocate_bits
    >>> layers = [
    ...     LayerSpec.from_table("conv1", 864, 10_838_016, {8: 0.001, 4: 0.09}),
    ...     LayerSpec.from_table("fc", 1_281_000, 1_281_000, {8: 0.0, 4: 0.004, 2: 0.2}),
    ... ]
    >>> allocation = allocate_bits(layers, Budget(avg_bits=4.5), pins={"conv1": 8})
    >>> allocation.weight_bits
    {'conv1': 8, 'fc': 4}

No torch import, and PuLP only when the ``ilp`` policy runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from quantune.errors import UserInputError
from quantune.search.allocation_apply import apply_allocation
from quantune.search.allocation_baselines import solve_greedy, solve_uniform
from quantune.search.allocation_budget import Budget
from quantune.search.allocation_exhaustive import solve_exhaustive
from quantune.search.allocation_ilp import next_best_ilp, solve_ilp, solve_near
from quantune.search.allocation_problem import (
    AllocationProblem,
    BitRange,
    PinValue,
    build_problem,
)
from quantune.search.allocation_result import Allocation, LayerChoice
from quantune.search.allocation_types import (
    FLOAT_BITS,
    AllocationInfeasibleError,
    AllocationSolverError,
    LayerOption,
    LayerSpec,
)

__all__ = [
    "FLOAT_BITS",
    "POLICIES",
    "Allocation",
    "AllocationInfeasibleError",
    "AllocationSolverError",
    "Budget",
    "LayerChoice",
    "LayerOption",
    "LayerSpec",
    "allocate_bits",
    "apply_allocation",
    "ilp_alternatives",
    "ilp_near",
]

#: A policy maps a reduced problem and a time limit to
#: ``(selection, status, binding budget names)``.
Policy = Callable[[AllocationProblem, float], tuple[list[int], str, tuple[str, ...]]]


def _ilp(problem: AllocationProblem, time_limit_s: float) -> tuple[list[int], str, tuple[str, ...]]:
    selection, proven, binding = solve_ilp(problem, time_limit_s)
    return selection, "optimal" if proven else "feasible", binding


def _heuristic(solve: Callable[[AllocationProblem], tuple[list[int], tuple[str, ...]]]) -> Policy:
    def run(problem: AllocationProblem, _time_limit_s: float) -> tuple[list[int], str, tuple[str, ...]]:
        problem.check_each_budget()  # the precise error, before the heuristic gives up
        selection, binding = solve(problem)
        return selection, "heuristic", binding
    return run


def _exhaustive(problem: AllocationProblem, _time_limit_s: float
                ) -> tuple[list[int], str, tuple[str, ...]]:
    selection, binding = solve_exhaustive(problem)
    return selection, "optimal", binding


#: Allocation policies by name: ``ilp`` (exact, CBC), ``greedy`` and ``uniform``
#: (benchmark baselines), ``exhaustive`` (exact enumeration of small problems).
POLICIES: Mapping[str, Policy] = {
    "ilp": _ilp,
    "greedy": _heuristic(solve_greedy),
    "uniform": _heuristic(solve_uniform),
    "exhaustive": _exhaustive,
}


def _as_budget(budget: Budget | str | Mapping[str, float] | None) -> Budget:
    if budget is None:
        return Budget()
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, str):
        return Budget.from_string(budget)
    return Budget.from_dict(dict(budget))


def _verify(problem: AllocationProblem, allocation: Allocation) -> None:
    """Re-check the result from its own totals, independently of the policy's sums."""
    used = {"weight_bits": allocation.weight_bits_total, "bops": allocation.bops,
            "latency_ms": allocation.latency_ms}
    for row in problem.rows:
        value = used[row.resource]
        if value is None or not row.satisfied(value):
            raise AllocationSolverError(
                f"internal error: policy {allocation.policy!r} returned {row.name}="
                f"{value} over the budget {row.requested:g}; please report it")
    bits = allocation.bits
    for unit in problem.units:
        if len({bits[problem.layers[i].name] for i in unit.layers}) != 1:
            raise AllocationSolverError("internal error: a group was split; please report it")


def allocate_bits(
    layers: Sequence[LayerSpec],
    budget: Budget | str | Mapping[str, float] | None = None,
    *,
    pins: Mapping[str, PinValue] | None = None,
    bit_ranges: Mapping[str, BitRange] | None = None,
    groups: Iterable[Iterable[str]] | None = None,
    keep_float: Iterable[str] | None = None,
    policy: str = "ilp",
    solver_time_limit_s: float = 60.0,
) -> Allocation:
    """Choose one option per layer minimizing the summed sensitivity under a budget.

    Args:
        layers: One spec per quantizable layer with its candidate options and their
            sensitivities (and latencies, for a latency budget).
        budget: A :class:`Budget`, its CLI string form (``"avg-bits=4.5"``) or dict
            form (``{"avg_bits": 4.5}``); ``None`` means unconstrained.
        pins: ``{layer: bits}`` with bits an int (any activation width), a
            ``(w_bits, a_bits)`` pair or ``"float"``.
        bit_ranges: ``{layer: (min_w_bits, max_w_bits)}``, inclusive, ``None`` for an
            open end; a float option counts as 32 bits.
        groups: Layers that must share the same ``(w_bits, a_bits)`` (e.g. q/k/v);
            overlapping groups merge.
        keep_float: Layers kept float (a zero-sensitivity float option is added if the
            layer has none).
        policy: A key of :data:`POLICIES`.
        solver_time_limit_s: Wall-clock limit per CBC solve; past it the best solution
            found is returned with ``status="feasible"``.

    Layer keys in ``pins``, ``bit_ranges``, ``groups`` and ``keep_float`` are exact names
    or ``"re:PATTERN"``; a key matching no layer is an error.

    Returns:
        The allocation; its totals are verified against every budget.

    Raises:
        AllocationInfeasibleError: The budget cannot be met; ``.constraint`` and
            ``.min_feasible`` name the budget to relax and its smallest feasible value.
        UserInputError: Invalid layers, keys or restrictions (e.g. a pin outside the
            layer's options).
        AllocationSolverError: The solver returned no usable solution.
    """
    if policy not in POLICIES:
        raise UserInputError(f"unknown allocation policy {policy!r}; use one of {sorted(POLICIES)}")
    problem = build_problem(layers, _as_budget(budget), pins=pins, bit_ranges=bit_ranges,
                            groups=groups, keep_float=keep_float)
    selection, status, binding = POLICIES[policy](problem, solver_time_limit_s)
    return _allocation(problem, selection, policy, status, binding)


def _allocation(problem: AllocationProblem, selection: Sequence[int], policy: str, status: str,
                binding: tuple[str, ...]) -> Allocation:
    """The verified :class:`Allocation` of one selection."""
    chosen = problem.layer_options(selection)
    allocation = Allocation(
        layers=tuple(LayerChoice(layer.name, layer.params, layer.macs, option.w_bits,
                                 option.a_bits, option.sensitivity, option.latency_ms)
                     for layer, option in zip(problem.layers, chosen, strict=True)),
        budget=problem.budget, policy=policy, status=status, binding=binding)
    _verify(problem, allocation)
    return allocation


def ilp_alternatives(
    layers: Sequence[LayerSpec],
    budget: Budget | str | Mapping[str, float] | None = None,
    *,
    count: int,
    pins: Mapping[str, PinValue] | None = None,
    bit_ranges: Mapping[str, BitRange] | None = None,
    groups: Iterable[Iterable[str]] | None = None,
    keep_float: Iterable[str] | None = None,
    solver_time_limit_s: float = 60.0,
) -> list[Allocation]:
    """The ``count`` allocations of least predicted loss under the budget, best first.

    The first is :func:`allocate_bits`'s ``ilp`` answer; each next one is the optimum
    of the same program with the earlier selections cut off. Fewer are returned when
    the budget admits fewer. Arguments as in :func:`allocate_bits`.
    """
    if count < 1:
        raise UserInputError(f"count must be at least 1, got {count}")
    problem = build_problem(layers, _as_budget(budget), pins=pins, bit_ranges=bit_ranges,
                            groups=groups, keep_float=keep_float)
    first, status, binding = _ilp(problem, solver_time_limit_s)
    selections = [first]
    while len(selections) < count:
        nxt = next_best_ilp(problem, selections, solver_time_limit_s)
        if nxt is None:
            break
        selections.append(nxt)
    return [_allocation(problem, sel, "ilp", status if i == 0 else "alternative", binding)
            for i, sel in enumerate(selections)]


def ilp_near(
    layers: Sequence[LayerSpec],
    budget: Budget | str | Mapping[str, float] | None,
    current: Mapping[str, tuple[int, int]],
    *,
    max_changes: int | None = None,
    pins: Mapping[str, PinValue] | None = None,
    bit_ranges: Mapping[str, BitRange] | None = None,
    groups: Iterable[Iterable[str]] | None = None,
    keep_float: Iterable[str] | None = None,
    solver_time_limit_s: float = 60.0,
) -> Allocation | None:
    """The least-loss allocation that changes at most ``max_changes`` layers (units of
    grouped layers) of ``current`` (``{name: (w_bits, a_bits)}``, float layers left out),
    or ``None`` when no allocation within that distance has a lower predicted loss.

    ``max_changes=None`` puts no limit on the distance. Other arguments as in
    :func:`allocate_bits`; ``current`` must be one of the problem's allocations.
    """
    problem = build_problem(layers, _as_budget(budget), pins=pins, bit_ranges=bit_ranges,
                            groups=groups, keep_float=keep_float)
    start = problem.selection_of(current)
    limit = len(problem.units) if max_changes is None else max_changes
    selection = solve_near(problem, start, limit, solver_time_limit_s)
    if selection is None:
        return None
    before, after = problem.loss(start), problem.loss(selection)
    # CBC's tolerance can return the start itself or a different selection of equal loss.
    if after >= before - 1e-9 * max(1.0, abs(before)):
        return None
    return _allocation(problem, selection, "ilp", "optimal", ())
