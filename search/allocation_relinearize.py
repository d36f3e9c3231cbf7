"""Relinearized allocation: measure the sensitivities again around the ILP's answer.

The integer program minimizes a sum of one-layer-at-a-time loss increases measured
around the float model. Under a tight budget the allocation puts many layers at low
widths at once, where their errors compound or cancel, and the sum mispredicts the
loss (MiniLM-L6 at 3 average bits: 0.133 predicted, 0.147 measured). The table is a
first-order model of the loss, accurate only near the point it was taken at.

``relinearize=k`` (:class:`~quantune.search.bits_api.AllocationOptions`) runs up to k
rounds of sequential linear programming with a trust region:

1. measure each layer's cost of moving from its allocated cell to every other
   candidate cell while every other layer stays at its allocated cell (a table
   linearized around the allocation: the own cell costs 0, wider cells less than
   nothing);
2. solve the same program (budget, pins, groups, ranges) over that table, first with no
   limit on how many layers change, and quantize the proposal and measure its loss on
   the same samples, paired with the current allocation's;
3. keep the proposal only when it is significantly better (paired z-score below ``-z``,
   the gate of :mod:`quantune.search.allocation_refine`); otherwise solve again
   allowing half as many layers to change as the rejected proposal did (a linear
   model is trusted over shorter steps), down to a single layer.

A round costs one probe per layer and candidate cell (the table's price, less the
probes at each layer's own cell) plus one evaluation per proposal; the rounds stop
when no proposal of a round is kept. Measured on the allocation benchmark, the full
step moves 9-26 layers and loses on every budget of both models: the trust region is
what can make a step pay.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from quantune.config import QuantConfig
from quantune.prepare import PreparedModel
from quantune.search.allocation_refine import MeasuredLosses, measured_losses, paired_z_scores
from quantune.search.allocation_result import Allocation
from quantune.search.sensitivity_table import SensitivityTable

Cell = tuple[int, int]
#: Measures the table linearized around ``{layer: cell}``.
TableAround = Callable[[Mapping[str, Cell]], SensitivityTable]
#: Solves the program over a table, changing at most ``max_changes`` layers of the
#: allocation (``None``: any number): ``(proposal, predicted loss change)``, or ``None``
#: when no allocation within that distance is predicted better.
SolveNear = Callable[[SensitivityTable, Allocation, "int | None"], "tuple[Allocation, float] | None"]


@dataclasses.dataclass(frozen=True)
class RelinearizationStep:
    """One proposal: how far it moved, what it predicted and what it measured.

    Attributes:
        round: Round of the proposal (each round measures one table).
        max_changes: Trust region it was solved in (``None``: no limit).
        changed_layers: Layers whose cell the proposal changes.
        predicted_change: Its predicted loss change over the current allocation (the
            relinearized program's objective difference; negative: better).
        measured_before: Measured loss increase over float of the current allocation.
        measured_after: The same for the proposal.
        z_score: Paired z-score of the proposal against the current allocation
            (negative: better).
        accepted: Whether the proposal replaced the current allocation.
        seconds: Wall time of the step (the round's table included in its first step).
    """

    round: int
    max_changes: int | None
    changed_layers: int
    predicted_change: float
    measured_before: float
    measured_after: float
    z_score: float
    accepted: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        def finite(x: float) -> float | str:
            # Strict JSON has no infinity.
            return x if math.isfinite(x) else ("-inf" if x < 0 else "inf")

        return {"round": self.round, "max_changes": self.max_changes, "changed_layers": self.changed_layers,
                "predicted_change": finite(self.predicted_change), "measured_before": finite(self.measured_before),
                "measured_after": finite(self.measured_after), "z_score": finite(self.z_score),
                "accepted": self.accepted, "seconds": round(self.seconds, 3)}


def allocation_cells(allocation: Allocation) -> dict[str, Cell]:
    """``{layer: (w_bits, a_bits)}`` of the allocation's quantized layers (float ones left out)."""
    return {c.name: (c.w_bits, c.a_bits) for c in allocation.layers if not c.is_float}


def _changed(a: Allocation, b: Allocation) -> int:
    return sum((x.w_bits, x.a_bits) != (y.w_bits, y.a_bits) for x, y in zip(a.layers, b.layers, strict=True))


def relinearize(
    prepared: PreparedModel,
    start: Allocation,
    *,
    rounds: int,
    table_around: TableAround,
    solve: SolveNear,
    batches: Sequence[Any],
    loss_name: str,
    base_config: QuantConfig | None = None,
    z: float = 2.0,
    show_progress: bool = True,
) -> tuple[Allocation, tuple[RelinearizationStep, ...]]:
    """Up to ``rounds`` relinearization rounds from ``start`` (see the module docstring).

    Args:
        prepared: The model the allocation is for.
        start: The allocation to start from (the ILP's answer).
        rounds: Maximum number of rounds, each measuring one table (0 returns ``start``).
        table_around: Measures the sensitivity table around ``{layer: cell}``.
        solve: Solves the program over a table within a trust region.
        batches: Samples the losses are measured on (those of the sensitivities).
        loss_name: The concrete loss (``ce``, ``kl``, ``top1-ce``, ``cosine``, ``mse``).
        base_config: Schemes and range methods the allocation is applied with.
        z: Significance gate of a proposal (0: any lower measured loss is taken).
        show_progress: Progress bars with ETA.

    Returns:
        ``(allocation, steps)``: the last accepted allocation (its layer sensitivities
        are those of the table it was solved over) and every proposal measured.
    """
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    if z < 0:
        raise ValueError(f"z must be >= 0, got {z}")

    def losses(allocation: Allocation) -> MeasuredLosses:
        return measured_losses(prepared, [allocation], base_config, batches, loss_name, show_progress=False)

    current, current_losses = start, None
    steps: list[RelinearizationStep] = []
    for index in range(rounds):
        began = time.perf_counter()
        table = table_around(allocation_cells(current))
        limit: int | None = None
        moved = False
        while True:
            found = solve(table, current, limit)
            if found is None:  # nothing within the region is predicted better
                break
            proposal, predicted = found
            changed = _changed(current, proposal)
            if current_losses is None:
                current_losses = losses(current)
            proposal_losses = losses(proposal)
            paired = np.concatenate([current_losses.per_sample, proposal_losses.per_sample])
            z_score = float(paired_z_scores(paired)[1])
            before, after = current_losses.increase[0], proposal_losses.increase[0]
            accepted = (after < before) if z == 0 else z_score < -z
            steps.append(RelinearizationStep(index, limit, changed, predicted, before, after, z_score,
                                             accepted, time.perf_counter() - began))
            began = time.perf_counter()
            if accepted:
                current, current_losses, moved = proposal, proposal_losses, True
                break
            if changed <= 1:
                break
            limit = changed // 2
        if not moved:
            break
    return current, tuple(steps)


__all__ = ["RelinearizationStep", "allocation_cells", "relinearize"]
