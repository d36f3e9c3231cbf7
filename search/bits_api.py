"""Model-level bit allocation: measure sensitivities, then solve the integer program.

>>> import quantune
>>> from quantune.search.bits_api import allocate_bits
>>> from quantune.search.allocation import apply_allocation
>>> allocation = allocate_bits(model, calib, budget="avg-bits=4.5", pins={"conv1": 8})  # doctest: +SKIP
>>> print(allocation.to_table())                                                     # doctest: +SKIP
>>> qmodel = quantune.quantize(model, apply_allocation(allocation), calib)           # doctest: +SKIP

Each call reuses cached sensitivities (see :mod:`quantune.search.sensitivity_cache`), so
allocating the same model under several budgets measures once. Pass a
:class:`~quantune.prepare.PreparedModel` instead of a module to skip re-preparing it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from quantune.config import QuantConfig
from quantune.errors import UserInputError
from quantune.prepare import PreparedModel, prepare
from quantune.search.allocation import Allocation, Budget, ilp_alternatives, ilp_near
from quantune.search.allocation import _as_budget as as_budget
from quantune.search.allocation import allocate_bits as allocate_from_specs
from quantune.search.allocation_names import match_names
from quantune.search.allocation_problem import BitRange, PinValue
from quantune.search.allocation_refine import Refinement, choose_measured, measured_losses
from quantune.search.allocation_relinearize import (
    Cell,
    RelinearizationStep,
    allocation_cells,
    relinearize,
)
from quantune.search.allocation_result import LayerChoice
from quantune.search.allocation_types import LayerSpec
from quantune.search.latency_table import measure_latency
from quantune.search.sensitivity import DEFAULT_MAX_SAMPLES, measure_sensitivity, resolved_loss
from quantune.search.sensitivity_table import Candidates, SensitivityTable


@dataclass(frozen=True)
class AllocationOptions:
    """How :func:`allocate_bits` measures and allocates (every field has a default).

    Attributes:
        weight_bits: Candidate weight widths.
        act_bits: Candidate activation widths.
        cross: ``additive`` (measure the two axes, derive the other cells) or ``full``.
        proxy: Sensitivity proxy: ``loss``, ``output_mse`` or ``hessian``.
        loss: ``auto``, ``ce``, ``kl``, ``top1-ce``, ``cosine`` or ``mse``.
        policy: ``ilp`` (exact), ``greedy`` or ``uniform`` (baselines).
        bit_ranges: ``{layer or "re:..": (min_w_bits, max_w_bits)}``.
        groups: Layers that must share widths (e.g. q/k/v projections).
        keep_float: Layers kept float.
        base_config: Schemes, range methods and procedure of every layer; the allocation
            only changes widths (default ``QuantConfig()``).
        max_samples: Calibration samples the sensitivity is measured on.
        seed: Seed of the sample subset and of the Hessian probes.
        cache_path: JSON file persisting the sensitivities.
        storage: Optuna storage URL persisting them in the study storage.
        latency: Measure the per-layer latency table; ``None`` measures it only when
            the budget has ``latency_ms``.
        latency_batch_size: Inputs per timed layer call.
        monotone: Never let fewer bits look better than more (removes measurement noise).
        hessian_probes: Hutchinson probes per batch for the ``hessian`` proxy.
        refine: ``ilp`` policy: measure the loss of this many allocations of least
            predicted loss (the optimum and its runners-up) and keep the optimum unless
            one measures significantly better (see
            :mod:`quantune.search.allocation_refine`); ``0`` or ``1`` trusts the prediction.
        refine_z: Paired z-score an alternative must beat the optimum by (default 2;
            0: the least measured loss wins however small the difference).
        context_bits: ``loss`` proxy: measure each layer with every other layer's weights
            at this width instead of float (the table linearized near the budget; see
            :func:`~quantune.search.sensitivity.measure_sensitivity`).
        relinearize: ``ilp`` policy, ``loss`` proxy: up to this many rounds of measuring
            the table again around the allocation and solving again within a shrinking
            trust region, keeping a new allocation when its measured loss is
            significantly lower (gate ``refine_z``; see
            :mod:`quantune.search.allocation_relinearize`); 0 is off.
        solver_time_limit_s: CBC time limit.
        show_progress: Progress bars with ETA.
    """

    weight_bits: tuple[int, ...] = (2, 3, 4, 6, 8)
    act_bits: tuple[int, ...] = (4, 8)
    cross: str = "additive"
    proxy: str = "loss"
    loss: str = "auto"
    policy: str = "ilp"
    bit_ranges: Mapping[str, BitRange] | None = None
    groups: tuple[tuple[str, ...], ...] = ()
    keep_float: tuple[str, ...] = ()
    base_config: QuantConfig | None = None
    max_samples: int | None = DEFAULT_MAX_SAMPLES
    seed: int = 0
    cache_path: str | Path | None = None
    storage: str | None = None
    latency: bool | None = None
    latency_batch_size: int = 1
    monotone: bool = True
    hessian_probes: int = 4
    context_bits: int | None = None
    refine: int = 4
    refine_z: float = 2.0
    relinearize: int = 0
    solver_time_limit_s: float = 60.0
    show_progress: bool = True

    @property
    def candidates(self) -> Candidates:
        return Candidates(tuple(self.weight_bits), tuple(self.act_bits), self.cross)

    def replace(self, **changes: Any) -> AllocationOptions:
        """A copy with fields changed; an unknown name is a clear error."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise UserInputError(f"unknown allocation option(s) {unknown}; known: {sorted(known)}")
        if "groups" in changes:
            changes["groups"] = tuple(tuple(g) for g in changes["groups"] or ())
        if "keep_float" in changes:
            changes["keep_float"] = tuple(changes["keep_float"] or ())
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ModelAllocation(Allocation):
    """An :class:`Allocation` of a real model, with how its sensitivities were measured.

    Attributes:
        measurement: Proxy, loss, candidates, samples, cells measured / cached, seconds.
        sensitivity: The full table the allocation was solved over (not serialized).
    """

    measurement: Mapping[str, Any] = field(default_factory=dict)
    sensitivity: SensitivityTable | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, object]:
        data = super().to_dict()
        data["measurement"] = dict(self.measurement)
        return data

    def to_table(self) -> str:
        m = self.measurement
        return (super().to_table() + f"\nsensitivity proxy {m.get('proxy')} (loss {m.get('loss')}), "
                f"{m.get('n_samples')} samples, {m.get('measured')} cells measured, "
                f"{m.get('cached')} from cache")


def layer_rows(prepared: PreparedModel) -> list[tuple[str, int, int]]:
    """``(name, weight elements, MACs)`` of every quantizable layer, as the allocator counts them."""
    # The allocator counts weight elements (size and average bits are about weights);
    # the bias stays float32 and is the same under every allocation.
    return [(info.name, info.weight_elements, info.macs) for info in prepared.layers]


def _needs_latency(options: AllocationOptions, budget: Budget) -> bool:
    return options.latency if options.latency is not None else budget.latency_ms is not None


def allocate_bits(
    model: nn.Module | PreparedModel,
    calib_data: Iterable[Any] | None = None,
    budget: Budget | str | Mapping[str, float] | None = None,
    *,
    pins: Mapping[str, PinValue] | None = None,
    options: AllocationOptions | None = None,
    **kwargs: Any,
) -> ModelAllocation:
    """Per-layer bit widths of least predicted loss under a budget.

    Args:
        model: The float model, or a :class:`PreparedModel` (then ``calib_data`` may be
            ``None``).
        calib_data: Calibration batches (labelled ``(inputs, labels)`` batches make the
            sensitivity measure the task loss).
        budget: A :class:`Budget`, ``"avg-bits=4.5,size=2MB,bops=3G,latency-ms=4"`` or a
            dict; ``None`` is unconstrained (every layer at its best width).
        pins: ``{layer: bits}``: an int, a ``(w_bits, a_bits)`` pair or ``"float"``.
        options: :class:`AllocationOptions`; keyword arguments override its fields
            (``allocate_bits(m, data, "avg-bits=4", proxy="hessian")``).

    Returns:
        A :class:`ModelAllocation` (per-layer widths, predicted loss, size, BOPs,
        estimated latency); apply it with
        ``quantune.quantize(model, apply_allocation(allocation, base_config), calib)``.

    Raises:
        AllocationInfeasibleError: The budget cannot be met; the error names the binding
            constraint and its smallest feasible value.
        UserInputError: Bad options, pins or names.
    """
    options = _checked(options or AllocationOptions(), kwargs)
    budget = as_budget(budget)
    if isinstance(model, PreparedModel):
        prepared = model
    else:
        if calib_data is None:
            raise UserInputError("allocate_bits needs calibration data (an iterable of batches)")
        prepared = prepare(model, calib_data, show_progress=options.show_progress)
    _check_not_float(prepared, pins, options)
    return _ModelAllocator(prepared, options, budget, pins).run()


def _checked(options: AllocationOptions, overrides: Mapping[str, Any]) -> AllocationOptions:
    options = options.replace(**overrides)
    if options.relinearize < 0:
        raise UserInputError(f"relinearize must be >= 0 rounds, got {options.relinearize}")
    if options.relinearize and options.proxy != "loss":
        raise UserInputError(f"relinearize measures the loss around an allocation: it needs proxy='loss', "
                             f"not {options.proxy!r}")
    return options


def _check_not_float(prepared: PreparedModel, pins: Mapping[str, PinValue] | None,
                     options: AllocationOptions) -> None:
    """Before measuring: a pinned or grouped layer that stays float is named with the reason,
    not just reported as matching no layer."""
    kept_float = dict(prepared.unsupported)
    for name in list(pins or {}) + [n for g in options.groups for n in g]:
        if name in kept_float:
            raise UserInputError(f"{name!r} is kept float ({kept_float[name]}); it has no bit width "
                                 "to pin or group: leave it out.")


class _ModelAllocator:
    """One allocation of a prepared model: measure the table, solve, then (``ilp`` only)
    compare the runners-up by measured loss and relinearize."""

    def __init__(self, prepared: PreparedModel, options: AllocationOptions, budget: Budget,
                 pins: Mapping[str, PinValue] | None) -> None:
        self.prepared, self.options, self.budget = prepared, options, budget
        self.restrictions: dict[str, Any] = dict(
            pins=pins, bit_ranges=options.bit_ranges, groups=options.groups,
            keep_float=options.keep_float, solver_time_limit_s=options.solver_time_limit_s)
        self.keep_float = _expand(options.keep_float, prepared.layer_names)
        self.latency: Mapping[str, Mapping[object, float]] | None = None

    def table_around(self, cells: Mapping[str, Cell] | None) -> SensitivityTable:
        """The sensitivity table linearized around float (``None``) or around an allocation."""
        o = self.options
        return measure_sensitivity(
            self.prepared, candidates=o.candidates, proxy=o.proxy, loss=o.loss,
            base_config=o.base_config, max_samples=o.max_samples, seed=o.seed,
            cache_path=o.cache_path, storage=o.storage, hessian_probes=o.hessian_probes,
            context_bits=o.context_bits if cells is None else None, context_cells=cells,
            show_progress=o.show_progress)

    def specs_of(self, table: SensitivityTable) -> list[LayerSpec]:
        return table.layer_specs(layer_rows(self.prepared), latency=self.latency,
                                 keep_float=self.keep_float, monotone=self.options.monotone)

    def run(self) -> ModelAllocation:
        o = self.options
        table = self.table_around(None)
        if _needs_latency(o, self.budget):
            self.latency = measure_latency(self.prepared, o.candidates.cells(), base_config=o.base_config,
                                           batch_size=o.latency_batch_size, show_progress=o.show_progress)
        specs = self.specs_of(table)
        if o.policy != "ilp":
            return with_measurement(allocate_from_specs(specs, self.budget, policy=o.policy,
                                                        **self.restrictions), table)
        alternatives = ilp_alternatives(specs, self.budget, count=max(o.refine, 1), **self.restrictions)
        result, refinement = alternatives[0], None
        if len(alternatives) == 1 and not o.relinearize:
            return with_measurement(result, table)
        # The samples and loss the sensitivities were measured on.
        batches = list(self.prepared.calibration_data(o.max_samples, o.seed))
        loss_name = resolved_loss(self.prepared, batches, o.loss)
        if len(alternatives) > 1:  # with one (refine off, or the only allocation) nothing to compare
            measured = measured_losses(self.prepared, alternatives, o.base_config, batches, loss_name,
                                       o.show_progress)
            result, refinement = choose_measured(alternatives, measured, loss_name, o.refine_z)
        steps: tuple[RelinearizationStep, ...] | None = None
        if o.relinearize:
            result, steps = relinearize(
                self.prepared, result, rounds=o.relinearize, table_around=self.table_around,
                solve=self.solve_near, batches=batches, loss_name=loss_name, base_config=o.base_config,
                z=o.refine_z, show_progress=o.show_progress)
            if any(s.accepted for s in steps):
                # Report the layer costs of the float-linearized table, so that the predicted
                # loss means the same for every allocation.
                result = dataclasses.replace(result, status="relinearized", layers=repriced(result.layers, specs))
        return with_measurement(result, table, refinement, steps)

    def solve_near(self, table: SensitivityTable, current: Allocation, limit: int | None
                   ) -> tuple[Allocation, float] | None:
        """The allocation of least loss predicted by ``table`` within ``limit`` changed layers
        of ``current``, with its predicted change; ``None`` when nothing there is better."""
        around = self.specs_of(table)
        proposal = ilp_near(around, self.budget, allocation_cells(current), max_changes=limit,
                            **self.restrictions)
        if proposal is None:
            return None
        now = math.fsum(c.sensitivity for c in repriced(current.layers, around))
        return proposal, proposal.predicted_loss - now


def _expand(patterns: Iterable[str], names: list[str]) -> list[str]:
    return [names[i] for p in patterns for i in match_names(p, names)]


def repriced(layers: Iterable[LayerChoice], specs: Iterable[LayerSpec]) -> tuple[LayerChoice, ...]:
    """The choices with their costs looked up in ``specs`` (another table's prices)."""
    by_name = {spec.name: spec for spec in specs}
    out = []
    for choice in layers:
        option = by_name[choice.name].option((choice.w_bits, choice.a_bits))
        out.append(choice if option is None else dataclasses.replace(choice, sensitivity=option.sensitivity))
    return tuple(out)


def with_measurement(allocation: Allocation, table: SensitivityTable,
                     refinement: Refinement | None = None,
                     steps: Sequence[RelinearizationStep] | None = None) -> ModelAllocation:
    """Attach the sensitivity table's provenance (and the refinement's and relinearization's
    figures) to an allocation."""
    fields = {f.name: getattr(allocation, f.name) for f in dataclasses.fields(Allocation)}
    measurement = {
        "proxy": table.proxy, "loss": table.loss, "weight_bits": list(table.candidates.weight_bits),
        "act_bits": list(table.candidates.act_bits), "cross": table.candidates.cross,
        "context_bits": table.context_bits, "n_samples": table.n_samples, "measured": table.measured, "cached": table.cached,
        "seconds": round(table.seconds, 3),
    }
    if refinement is not None:
        measurement["refine"] = refinement.to_dict()
    if steps is not None:  # relinearization ran (an empty list: nothing was predicted better)
        measurement["relinearize"] = [s.to_dict() for s in steps]
    return ModelAllocation(**fields, measurement=measurement, sensitivity=table)


__all__ = ["AllocationOptions", "ModelAllocation", "allocate_bits", "layer_rows", "with_measurement"]
