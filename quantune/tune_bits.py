"""The search's bit policy: per-layer weight widths from the allocator under the user's budget.

Without a bit budget a search point has one weight width (``w_bits``) for every layer.
With one (``tune(..., bit_budget="avg-bits=4.5")``, ``quantune tune --bit-budget``) the
``bit_policy`` dimension replaces ``w_bits``: each point's widths are allocated under the
budget by

- ``ilp``: the integer program over measured per-layer sensitivity,
- ``greedy``: demote the least sensitive layer first (the peer tools' rule),
- ``uniform``: one width everywhere, first and last layer 8 bits, the highest that fits.

so every trial of the search meets the budget, and the search chooses the policy together
with the range methods, granularity and calibration procedure. A budget too tight for
8-bit first and last layers (a small model) searches without them, with a warning. The sensitivity table is
measured once per activation width and weight scheme (lazily, at the first point that
needs it) and cached
in the study storage, so a resumed search or a second worker measures nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from quantune.config import QuantConfig
from quantune.errors import UserInputError
from quantune.prepare import PreparedModel

#: Values of the ``bit_policy`` dimension; ``uniform`` without a budget means ``w_bits``.
BIT_POLICIES = ("uniform", "greedy", "ilp")
#: The policies searched when a budget is given and the space does not name them.
DEFAULT_BUDGET_POLICIES = ("ilp", "uniform")


class BitPolicy:
    """Allocates the per-layer weight widths of search points under one budget.

    Args:
        prepared: the prepared float model (statistics collected).
        budget: a :class:`quantune.search.allocation.Budget`, its string form
            (``"avg-bits=4.5,size=2MB"``) or dict form.
        weight_bits: candidate weight widths of the allocator.
        storage: Optuna storage URL that caches the sensitivity table (the study's).
        seed: seed of the sensitivity subset.
        show_progress: progress bar while sensitivities are measured.
    """

    def __init__(
        self,
        prepared: PreparedModel,
        budget: Any,
        *,
        weight_bits: Sequence[int] = (2, 3, 4, 6, 8),
        storage: str | None = None,
        seed: int = 0,
        show_progress: bool = True,
    ) -> None:
        from quantune.search.allocation import _as_budget

        self.prepared = prepared
        self.budget = _as_budget(budget)
        if not self.budget.items():
            raise UserInputError("A bit budget needs at least one limit, e.g. 'avg-bits=4.5' or 'size=2MB'.")
        self.weight_bits = tuple(sorted(set(int(b) for b in weight_bits)))
        self.storage = storage
        self.seed = seed
        self.show_progress = show_progress
        self._tables: dict[tuple[int, Any], Any] = {}
        self.measurements = 0  # sensitivity tables measured or loaded by this object

    def table(self, a_bits: int, weight: Any = None) -> Any:
        """The sensitivity table at activation width ``a_bits`` for weights quantized like
        ``weight`` (a :class:`~quantune.config.WeightQuant`; its width is ignored), measured
        once per pair: 3-bit min/max and 3-bit MSE-clipped weights rank layers differently."""
        from quantune.config import ActQuant, LayerQuantConfig, WeightQuant

        weight = weight if weight is not None else WeightQuant()
        key = (a_bits, dataclasses.replace(weight, bits=8))
        if key not in self._tables:
            from quantune.search.sensitivity import measure_sensitivity
            from quantune.search.sensitivity_table import Candidates

            self._tables[key] = measure_sensitivity(
                self.prepared, candidates=Candidates(self.weight_bits, (a_bits,)), seed=self.seed,
                base_config=QuantConfig(LayerQuantConfig(key[1], ActQuant(bits=a_bits))),
                storage=self.storage, show_progress=self.show_progress)
            self.measurements += 1
        return self._tables[key]

    def allocate(
        self,
        policy: str,
        a_bits: int,
        *,
        pins: Mapping[str, Any] | None = None,
        keep_float: Sequence[str] = (),
        weight: Any = None,
    ) -> Any:
        """The :class:`~quantune.search.allocation.Allocation` of ``policy`` under the budget
        (sensitivities measured with ``weight``'s range method and granularity).

        Raises:
            AllocationInfeasibleError: the budget cannot be met with these pins (the error
                names the binding constraint and its smallest feasible value).
        """
        from quantune.search.allocation import allocate_bits

        if policy not in BIT_POLICIES:
            raise UserInputError(f"Unknown bit policy {policy!r}; use one of {BIT_POLICIES}.")
        from quantune.search.bits_api import layer_rows

        specs = self.table(a_bits, weight).layer_specs(layer_rows(self.prepared), keep_float=list(keep_float))
        return allocate_bits(specs, self.budget, pins=pins, keep_float=keep_float, policy=policy)

    def apply(
        self,
        policy: str,
        base: QuantConfig,
        a_bits: int,
        *,
        edges_8bit: bool,
        keep_float: Sequence[str] = (),
    ) -> QuantConfig:
        """``base`` with every layer's weight width set by ``policy`` under the budget.

        Args:
            policy: ``ilp``, ``greedy`` or ``uniform``.
            base: schemes, range methods and procedure of every layer.
            a_bits: the activation width of the point (the allocator only moves weights).
            edges_8bit: pin the first and last quantizable layer to 8-bit weights.
            keep_float: layers kept float (the point's float fallback).
        """
        from quantune.search.allocation_apply import apply_allocation

        pins = self.edge_pins(a_bits, keep_float) if edges_8bit else {}
        weight = base.default.weight if base.default is not None else None
        allocation = self.allocate(policy, a_bits, pins=pins, keep_float=keep_float, weight=weight)
        return apply_allocation(allocation, base)

    def edge_pins(self, a_bits: int, keep_float: Sequence[str] = ()) -> dict[str, Any]:
        """The first and last quantizable layer pinned to 8-bit weights."""
        names = self.prepared.layer_names
        return {name: (8, a_bits) for name in {names[0], names[-1]} if name not in keep_float} if names else {}

    def edges_fit(self, a_bits: int) -> bool:
        """Whether the budget can be met with the first and last layer at 8 bits."""
        from quantune.search.allocation_types import AllocationInfeasibleError

        try:
            self.allocate("ilp", a_bits, pins=self.edge_pins(a_bits))
        except AllocationInfeasibleError:
            return False
        return True


__all__ = ["BIT_POLICIES", "DEFAULT_BUDGET_POLICIES", "BitPolicy"]
