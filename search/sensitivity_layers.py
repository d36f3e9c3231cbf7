"""Quantized copies of every layer at one candidate width, for one-layer-at-a-time probes.

A sensitivity cell ``(w_bits, a_bits)`` is measured by swapping one float layer for its
quantized version while every other layer stays float. The quantized versions come
from :meth:`quantune.prepare.PreparedModel.quantize` itself, so their weight ranges and
activation ranges are calibrated exactly as the final model's will be: the base
configuration's range methods, granularity and scheme, only the widths replaced.

Data-driven procedure steps (AdaQuant, bias correction, BN re-estimation) are left out:
they act on the whole model at once, and running them per cell would cost one full
calibration per layer and width. The table thus ranks layers by their sensitivity
after range calibration, which is what the allocator needs.

Probing with the procedure's GPTQ too (parallel mode, each layer against float inputs)
was measured and not kept: on the allocation benchmark with a GPTQ procedure it moved
EfficientNet-Lite0's ilp agreement by -0.21 to +0.10 across budgets (sum over six budgets
4.00 -> 3.81) and MiniLM-L6's mean cosine by -0.005 to +0.005, within the noise of the
evaluation sets, at several times the measuring cost (JSON:
``benchmarks/out/allocation_gptqprobe_*``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from quantune.config import CalibrationProcedure, LayerQuantConfig, QuantConfig
from quantune.modules import QuantizedLayer

if TYPE_CHECKING:
    from quantune.prepare import PreparedModel

Cell = tuple[int, int]


def cell_layer_config(base: LayerQuantConfig | None, cell: Cell) -> LayerQuantConfig:
    """The base layer config with the cell's widths (a weight-only base stays weight-only)."""
    base = base if base is not None else LayerQuantConfig()
    act = base.activation
    if act is not None:
        act = dataclasses.replace(act, bits=cell[1])
    return dataclasses.replace(base, weight=dataclasses.replace(base.weight, bits=cell[0]),
                               activation=act)


def range_only(procedure: CalibrationProcedure) -> CalibrationProcedure:
    """``procedure`` without its data-driven steps: range calibration on the same samples."""
    return CalibrationProcedure(max_samples=procedure.max_samples, seed=procedure.seed)


def cells_config(base: QuantConfig, cells: Mapping[str, Cell]) -> QuantConfig:
    """Each named layer at its own cell's widths, every other layer float; only range
    calibration in the procedure."""
    overrides = tuple((n, cell_layer_config(base.for_layer(n), cell)) for n, cell in cells.items())
    return QuantConfig(default=None, overrides=overrides, procedure=range_only(base.procedure))


def cell_config(base: QuantConfig, names: Iterable[str], cell: Cell) -> QuantConfig:
    """Every named layer at the cell's widths; only range calibration in the procedure."""
    return cells_config(base, dict.fromkeys(names, cell))


def layers_at(prepared: PreparedModel, base: QuantConfig, cells: Mapping[str, Cell]
              ) -> dict[str, QuantizedLayer]:
    """``{layer: QuantizedLayer}`` with each layer at its own cell, in ``simulate`` mode,
    detached from any model (a layer the base keeps float is left out)."""
    qmodel = prepared.quantize(cells_config(base, cells), mode="simulate")
    layers = qmodel.quantized_layers()
    for layer in layers.values():
        layer.requires_grad_(False)
    return {n: layers[n] for n in cells if n in layers}


def quantized_layers(
    prepared: PreparedModel, base: QuantConfig, cell: Cell, names: Iterable[str] | None = None
) -> dict[str, QuantizedLayer]:
    """``{layer: QuantizedLayer}`` at one cell, in ``simulate`` mode, detached from any model."""
    names = list(names) if names is not None else prepared.layer_names
    return layers_at(prepared, base, dict.fromkeys(names, cell))


def base_signature(base: QuantConfig) -> str:
    """What of the base configuration changes a sensitivity (for cache keys): the
    per-layer schemes and range methods, with the widths blanked out."""
    blank = QuantConfig(
        default=None if base.default is None else cell_layer_config(base.default, (8, 8)),
        overrides=tuple((p, None if c is None else cell_layer_config(c, (8, 8)))
                        for p, c in base.overrides),
        procedure=range_only(base.procedure),
    )
    return blank.to_json(indent=None)
