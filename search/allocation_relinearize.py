"""Relinearized allocation: measure the sensitivities again around the ILP's answer.

The integer program minimizes a sum of one-layer-at-a-time loss increases measured
around the float model. Under a tight budget the allocation puts many layers at low
widths at once, where their errors compound or cancel, and the sum mispredicts the
loss (MiniLM-L6 at 3 average bits: 0.133 predicted, 0.147 measured). The table is a
first-order model of the loss, and it is accurate only near the point it was taken at.

``relinearize=k`` (:class:`~quantune.search.bits_api.AllocationOptions`) takes up to k
steps of sequential linear programming over the allocation:

1. measure each layer's cost of moving from its allocated cell to every other
   candidate cell while every other layer stays at its allocated cell (a table
   linearized around the allocation: the own cell costs 0, wider cells cost less than
   nothing);
2. solve the same program (budget, pins, groups, ranges) over that table;
3. quantize the proposal and measure its loss on the same samples, paired with the
   current allocation's; the proposal replaces it only when it is significantly better
   (paired z-score below ``-z``, the gate of :mod:`quantune.search.allocation_refine`).

The rounds stop at the first proposal that is not accepted or equals the current
allocation. A round costs one probe per layer and candidate cell (the table's price,
less the probes at each layer's own cell) plus two model evaluations.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from quantune.config import QuantConfig
from quantune.prepare import PreparedModel
from quantune.search.allocation_refine import measured_losses, paired_z_scores
from quantune.search.allocation_result import Allocation
from quantune.search.sensitivity_table import SensitivityTable

Cell = tuple[int, int]
#: Measures the table linearized around ``{layer: cell}``.
TableAround = Callable[[Mapping[str, Cell]], SensitivityTable]
#: Solves the allocation program over a table.
Solve = Callable[[SensitivityTable], Allocation]


@dataclasses.dataclass(frozen=True)
class RelinearizationRound:
    """One round: what the program proposed and what it measured.

    Attributes:
        changed_layers: Layers whose cell the proposal changes.
        predicted_change: The proposal's predicted loss change over the current
            allocation (the relinearized program's objective).
        measured_before: Measured loss increase over float of the current allocation.
        measured_after: The same for the proposal (``nan`` when nothing changed).
        z_score: Paired z-score of the proposal against the current allocation
            (negative: better).
        accepted: Whether the proposal replaced the current allocation.
        seconds: Wall time of the round.
    """

    changed_layers: int
    predicted_change: float
    measured_before: float
    measured_after: float
    z_score: float
    accepted: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        def finite(x: float) -> float | str | None:
            # Strict JSON has neither NaN nor infinity.
            if math.isnan(x):
                return None
            return x if math.isfinite(x) else ("-inf" if x < 0 else "inf")

        return {"changed_layers": self.changed_layers, "predicted_change": finite(self.predicted_change),
                "measured_before": finite(self.measured_before), "measured_after": finite(self.measured_after),
                "z_score": finite(self.z_score), "accepted": self.accepted, "seconds": round(self.seconds, 3)}


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
    solve: Solve,
    batches: Sequence[Any],
    loss_name: str,
    base_config: QuantConfig | None = None,
    z: float = 2.0,
    show_progress: bool = True,
) -> tuple[Allocation, tuple[RelinearizationRound, ...]]:
    """Up to ``rounds`` relinearization steps from ``start`` (see the module docstring).

    Args:
        prepared: The model the allocation is for.
        start: The allocation to start from (the ILP's answer).
        rounds: Maximum number of rounds (0 returns ``start``).
        table_around: Measures the sensitivity table around ``{layer: cell}``.
        solve: Solves the program over a table.
        batches: Samples the losses are measured on (those of the sensitivities).
        loss_name: The concrete loss (``ce``, ``kl``, ``top1-ce``, ``cosine``, ``mse``).
        base_config: Schemes and range methods the allocation is applied with.
        z: Significance gate of a proposal (0: any lower measured loss is taken).
        show_progress: Progress bars with ETA.

    Returns:
        ``(allocation, rounds)``: the last accepted allocation (its layer sensitivities
        are those of the table it was solved over) and what each round did.
    """
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    if z < 0:
        raise ValueError(f"z must be >= 0, got {z}")
    current = start
    history: list[RelinearizationRound] = []
    for _ in range(rounds):
        began = time.perf_counter()
        proposal = solve(table_around(allocation_cells(current)))
        changed = _changed(current, proposal)
        if changed == 0:  # the program's answer around it is the allocation itself
            history.append(RelinearizationRound(0, proposal.predicted_loss, math.nan, math.nan, 0.0, False,
                                                time.perf_counter() - began))
            break
        measured = measured_losses(prepared, [current, proposal], base_config, batches, loss_name,
                                   show_progress)
        z_score = float(paired_z_scores(measured.per_sample)[1])
        before, after = measured.increase
        accepted = (after < before) if z == 0 else z_score < -z
        history.append(RelinearizationRound(changed, proposal.predicted_loss, before, after, z_score, accepted,
                                            time.perf_counter() - began))
        if not accepted:
            break
        current = proposal
    return current, tuple(history)


__all__ = ["RelinearizationRound", "allocation_cells", "relinearize"]
