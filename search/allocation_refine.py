"""Measured choice among the integer program's best allocations (``refine``).

The integer program minimizes a *predicted* loss: the sum of one-layer-at-a-time
sensitivities. Layer errors do not add exactly (they compound through the network, or
cancel), so the predicted optimum and its runners-up, close in prediction, can differ in
fact. With ``refine=k`` the k allocations of least predicted loss are each quantized
(range calibration only, as the sensitivities were measured) and their real loss is
measured on the sensitivity samples. That costs k model evaluations, against one per
layer and cell for the table itself.

Those samples are few (a calibration set), so a measured difference may be noise: on
EfficientNet-Lite0 at 4 average bits the alternative of least loss on 16 calibration
images had the *largest* loss on 256 held-out ones. An alternative therefore replaces
the ILP optimum only when it beats it significantly in a paired comparison on the same
samples: mean per-sample loss difference below ``-z`` standard errors (``z=2``, about
a 2.5 % one-sided false-switch rate per alternative; ``z=0``: the least measured loss
wins). Among significant ones the least measured loss wins.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from quantune.batches import run_model
from quantune.config import QuantConfig
from quantune.prepare import PreparedModel
from quantune.progress import progress_bar
from quantune.search import sensitivity_probes as probes
from quantune.search.allocation_apply import apply_allocation
from quantune.search.allocation_result import Allocation
from quantune.search.sensitivity_layers import range_only
from quantune.search.sensitivity_losses import (
    loss_function,
    output_tensor,
    per_sample_loss_function,
)


@dataclasses.dataclass(frozen=True)
class Refinement:
    """Which alternative won and what each measured.

    Attributes:
        chosen: Index of the winner among the alternatives (0 = the ILP optimum).
        predicted: Predicted loss of every alternative, best first.
        measured: Measured loss increase over float of every alternative.
        loss: The loss measured (``ce``, ``kl``, ``top1-ce``, ``cosine`` or ``mse``).
        z_scores: Paired z-score of each alternative against the optimum (mean
            per-sample loss difference / its standard error; negative: better; 0 for the
            optimum itself, +-inf for a difference without spread).
        z: Significance threshold used (0: the least measured loss wins).
    """

    chosen: int
    predicted: tuple[float, ...]
    measured: tuple[float, ...]
    loss: str
    z_scores: tuple[float, ...] = ()
    z: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        # A difference without spread has an infinite z-score: strict JSON has no infinity.
        z_scores = [z if math.isfinite(z) else ("-inf" if z < 0 else "inf") for z in self.z_scores]
        return {"chosen": self.chosen, "predicted": list(self.predicted), "measured": list(self.measured),
                "loss": self.loss, "z_scores": z_scores, "z": self.z}


@dataclasses.dataclass(frozen=True)
class MeasuredLosses:
    """Losses of the alternatives on the sensitivity samples.

    Attributes:
        increase: Mean loss increase over float of each alternative.
        per_sample: ``[alternatives, samples]`` per-sample losses (paired: same samples).
    """

    increase: list[float]
    per_sample: np.ndarray


@torch.no_grad()
def _per_sample(model: Any, batches: Sequence[Any], refs: Sequence[torch.Tensor], loss_name: str) -> np.ndarray:
    fn = per_sample_loss_function(loss_name)
    return np.concatenate([
        fn(output_tensor(run_model(model, batch)), ref, batch).double().cpu().numpy()
        for batch, ref in zip(batches, refs, strict=True)
    ])


def measured_losses(
    prepared: PreparedModel,
    alternatives: Sequence[Allocation],
    base_config: QuantConfig | None,
    batches: Sequence[Any],
    loss_name: str,
    show_progress: bool = True,
) -> MeasuredLosses:
    """The losses of each allocation, quantized with range calibration."""
    base = base_config or QuantConfig()
    base = dataclasses.replace(base, procedure=range_only(base.procedure))
    refs = probes.float_reference(prepared.float_model, batches, loss_function(loss_name)).outputs
    # The float model's own losses from its outputs (nonzero only for ``ce``): no second pass.
    fn = per_sample_loss_function(loss_name)
    float_losses = np.concatenate([fn(ref, ref, batch).double().cpu().numpy()
                                   for batch, ref in zip(batches, refs, strict=True)])
    rows = []
    with progress_bar(total=len(alternatives), desc="refine (measured ILP alternatives)", unit="alloc",
                      enable=show_progress) as bar:
        for allocation in alternatives:
            qmodel = prepared.quantize(apply_allocation(allocation, base), mode="simulate")
            rows.append(_per_sample(qmodel, batches, refs, loss_name))
            bar.update(1)
    per_sample = np.stack(rows)
    return MeasuredLosses([float(r.mean() - float_losses.mean()) for r in per_sample], per_sample)


def paired_z_scores(per_sample: np.ndarray) -> np.ndarray:
    """z-score of each row's mean per-sample difference from row 0.

    A difference without spread is certain: -inf / +inf by its sign (0 when none). With
    a single sample nothing can be told apart: all 0.
    """
    diff = per_sample - per_sample[:1]
    n = diff.shape[1]
    if n < 2:
        return np.zeros(len(per_sample))
    se = diff.std(axis=1, ddof=1) / np.sqrt(n)
    mean = diff.mean(axis=1)
    certain = np.where(mean < 0, -np.inf, np.where(mean > 0, np.inf, 0.0))
    return np.divide(mean, se, out=certain, where=se > 0)


def choose_measured(alternatives: Sequence[Allocation], measured: MeasuredLosses, loss_name: str,
                    z: float = 2.0) -> tuple[Allocation, Refinement]:
    """The ILP optimum unless an alternative's measured loss is significantly lower
    (paired z-score below ``-z``); then the least measured loss among those.

    ``z=0`` takes the least measured loss outright (the earliest on ties).
    """
    if z < 0:
        raise ValueError(f"z must be >= 0, got {z}")
    z_scores = paired_z_scores(measured.per_sample)
    increase = measured.increase
    eligible = [0] + [i for i in range(1, len(increase)) if z == 0 or z_scores[i] < -z]
    chosen = min(eligible, key=lambda i: (increase[i], i))
    return alternatives[chosen], Refinement(
        chosen, tuple(a.predicted_loss for a in alternatives), tuple(increase), loss_name,
        tuple(float(v) for v in z_scores), z)


__all__ = ["MeasuredLosses", "Refinement", "choose_measured", "measured_losses", "paired_z_scores"]
