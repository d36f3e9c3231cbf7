"""Measured choice among the integer program's best allocations (``refine``).

The integer program minimizes a *predicted* loss: the sum of one-layer-at-a-time
sensitivities. Layer errors do not add exactly (they compound through the network, or
cancel), so the predicted optimum and its runners-up, close in prediction, can differ in
fact. With ``refine=k`` the k allocations of least predicted loss are each quantized
(range calibration only, as the sensitivities were measured) and their real loss is
measured on the sensitivity samples; the least measured loss wins. That costs k model
evaluations, against one per layer and cell for the table itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from quantune.config import QuantConfig
from quantune.prepare import PreparedModel
from quantune.progress import progress_bar
from quantune.search import sensitivity_probes as probes
from quantune.search.allocation_apply import apply_allocation
from quantune.search.allocation_result import Allocation
from quantune.search.sensitivity_layers import range_only
from quantune.search.sensitivity_losses import loss_function


@dataclasses.dataclass(frozen=True)
class Refinement:
    """Which alternative won and what each measured.

    Attributes:
        chosen: Index of the winner among the alternatives (0 = the ILP optimum).
        predicted: Predicted loss of every alternative, best first.
        measured: Measured loss increase over float of every alternative.
        loss: The loss measured (``ce``, ``kl``, ``top1-ce``, ``cosine`` or ``mse``).
    """

    chosen: int
    predicted: tuple[float, ...]
    measured: tuple[float, ...]
    loss: str

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "predicted": list(self.predicted),
                "measured": list(self.measured), "loss": self.loss}


def measured_losses(
    prepared: PreparedModel,
    alternatives: Sequence[Allocation],
    base_config: QuantConfig | None,
    batches: Sequence[Any],
    loss_name: str,
    show_progress: bool = True,
) -> list[float]:
    """The loss increase over float of each allocation, quantized with range calibration."""
    base = base_config or QuantConfig()
    base = dataclasses.replace(base, procedure=range_only(base.procedure))
    loss = loss_function(loss_name)
    ref = probes.float_reference(prepared.float_model, batches, loss)
    out = []
    with progress_bar(total=len(alternatives), desc="refine (measured ILP alternatives)", unit="alloc",
                      enable=show_progress) as bar:
        for allocation in alternatives:
            qmodel = prepared.quantize(apply_allocation(allocation, base), mode="simulate")
            out.append(probes.mean_loss_increase(qmodel, batches, ref, loss))
            bar.update(1)
    return out


def choose_measured(alternatives: Sequence[Allocation], measured: Sequence[float], loss_name: str
                    ) -> tuple[Allocation, Refinement]:
    """The alternative of least measured loss (the earliest, i.e. best predicted, on ties)."""
    chosen = min(range(len(measured)), key=lambda i: (measured[i], i))
    return alternatives[chosen], Refinement(
        chosen, tuple(a.predicted_loss for a in alternatives), tuple(measured), loss_name)


__all__ = ["Refinement", "choose_measured", "measured_losses"]
