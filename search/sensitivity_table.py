"""The per-layer sensitivity table: layer x (w_bits, a_bits) -> predicted loss increase.

A :class:`SensitivityTable` is plain data (no torch): it says which proxy measured it,
which loss the proxy stands for, and for every layer the value of every candidate cell.
It turns into the allocator's :class:`~quantune.search.allocation.LayerSpec` list with
:meth:`SensitivityTable.layer_specs`.

Cells off the measured axes. Measuring every ``(w_bits, a_bits)`` pair costs
``len(weight_bits) * len(act_bits)`` evaluations per layer. With ``cross="additive"``
(the default) only the two axes are measured, ``(w, A)`` for every weight width at the
widest activation width ``A`` and ``(W, a)`` for every activation width at the widest
weight width ``W``; the rest is ``s(w, A) + s(W, a) - s(W, A)``: weight and activation
quantization noise are independent and small, so their loss increases add to first
order (the same assumption HAWQ and AIMET's per-layer tables make).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from quantune.errors import UserInputError
from quantune.search.allocation_types import LayerSpec

Cell = tuple[int, int]

#: Proxies: ``loss`` (the loss itself, one layer quantized at a time), ``output_mse``
#: (relative error power of the layer's own output), ``hessian`` (output error weighted by
#: a Hutchinson estimate of the loss Hessian's trace w.r.t. the layer output).
PROXIES = ("loss", "output_mse", "hessian")
CROSS_MODES = ("additive", "full")


@dataclass(frozen=True)
class Candidates:
    """The bit widths a layer may take.

    Attributes:
        weight_bits: Candidate weight widths (2-8).
        act_bits: Candidate activation widths (2-8).
        cross: ``"additive"`` measures the two axes and derives the other cells;
            ``"full"`` measures every pair.
    """

    weight_bits: tuple[int, ...] = (2, 3, 4, 6, 8)
    act_bits: tuple[int, ...] = (4, 8)
    cross: str = "additive"

    def __post_init__(self) -> None:
        for what in ("weight_bits", "act_bits"):
            values = tuple(sorted(set(getattr(self, what))))
            if not values or any(isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 8
                                 for b in values):
                raise UserInputError(f"candidate {what} must be integers from 2 to 8, got "
                                     f"{getattr(self, what)!r}")
            object.__setattr__(self, what, values)
        if self.cross not in CROSS_MODES:
            raise UserInputError(f"cross must be one of {CROSS_MODES}, got {self.cross!r}")

    @property
    def top(self) -> Cell:
        """The widest cell ``(W, A)``."""
        return (self.weight_bits[-1], self.act_bits[-1])

    def cells(self) -> list[Cell]:
        """Every cell of the table, widest first."""
        return sorted(((w, a) for w in self.weight_bits for a in self.act_bits), reverse=True)

    def measured_cells(self) -> list[Cell]:
        """The cells that are measured (all of them when ``cross="full"``)."""
        if self.cross == "full":
            return self.cells()
        w_top, a_top = self.top
        axes = {(w, a_top) for w in self.weight_bits} | {(w_top, a) for a in self.act_bits}
        return sorted(axes, reverse=True)


def derive_cells(measured: Mapping[Cell, float], candidates: Candidates) -> dict[Cell, float]:
    """Complete one layer's measured cells into the full table (additive rule above)."""
    if candidates.cross == "full":
        return {c: measured[c] for c in candidates.cells()}
    w_top, a_top = candidates.top
    base = measured[(w_top, a_top)]
    return {(w, a): measured[(w, a_top)] + measured[(w_top, a)] - base
            for w, a in candidates.cells()}


def monotone_envelope(cells: Mapping[Cell, float]) -> dict[Cell, float]:
    """Make fewer bits never look better than more bits.

    A noisy measurement can make 3 bits look better than 4, and an allocator would then
    take the 3 bits for free. Each cell is raised to the largest value of the cells at
    least as precise as it (no fewer weight and no fewer activation bits), so the
    sensitivity never decreases when bits are removed.
    """
    out = {}
    for (w, a), value in cells.items():
        wider = [v for (w2, a2), v in cells.items() if w2 >= w and a2 >= a]
        out[(w, a)] = max([value, *wider])
    return out


@dataclass(frozen=True)
class SensitivityTable:
    """Measured sensitivities of every quantizable layer.

    Attributes:
        proxy: One of :data:`PROXIES`.
        loss: The loss the values stand for (``ce``, ``kl``, ``cosine``, ``mse``; for
            ``output_mse`` the relative output error power).
        candidates: The candidate widths.
        values: ``{layer: {(w_bits, a_bits): value}}`` over every candidate cell, in
            layer order.
        n_samples: Calibration samples the measurement used.
        measured: Cells newly measured to build this table (0 when fully cached).
        cached: Cells read from a cache.
        seconds: Wall-clock time of the new measurements.
        context_bits: The weight width every other layer ran at while one layer was
            probed (``None``: float, the table is linearized around the float model).
        context_cells: The cell every other layer ran at while one layer was probed,
            when the table is linearized around an allocation (``None`` otherwise).
    """

    proxy: str
    loss: str
    candidates: Candidates
    values: Mapping[str, Mapping[Cell, float]]
    n_samples: int = 0
    measured: int = 0
    cached: int = 0
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)
    context_bits: int | None = None
    context_cells: Mapping[str, Cell] | None = None

    @property
    def layer_names(self) -> list[str]:
        return list(self.values)

    def value(self, layer: str, w_bits: int, a_bits: int) -> float:
        """The sensitivity of one cell."""
        return self.values[layer][(w_bits, a_bits)]

    def layer_specs(
        self,
        layers: Sequence[tuple[str, int, int]],
        *,
        latency: Mapping[str, Mapping[object, float]] | None = None,
        keep_float: Iterable[str] = (),
        monotone: bool = True,
    ) -> list[LayerSpec]:
        """The allocator's input: one :class:`LayerSpec` per ``(name, params, macs)``.

        Args:
            layers: ``(name, weight elements, MACs)`` per layer, in model order.
            latency: Optional ``{layer: {(w, a) or "float": ms}}``.
            keep_float: Names (exact) that get a zero-sensitivity float option, with its
                latency when one was measured.
            monotone: Apply :func:`monotone_envelope` to each layer's cells.
        """
        floats = set(keep_float)
        specs = []
        for name, params, macs in layers:
            if name not in self.values:
                raise UserInputError(f"the sensitivity table has no layer {name!r}")
            cells: dict[object, float] = dict(
                monotone_envelope(self.values[name]) if monotone else self.values[name])
            lat = dict(latency[name]) if latency is not None and name in latency else None
            if name in floats:
                cells["float"] = 0.0
            if lat is not None:
                lat = {k: v for k, v in lat.items() if k in cells}
            specs.append(LayerSpec.from_table(name, params, macs, cells, lat))
        return specs

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (cells as ``"w,a"`` strings)."""
        return {
            "proxy": self.proxy, "loss": self.loss,
            "candidates": {"weight_bits": list(self.candidates.weight_bits),
                           "act_bits": list(self.candidates.act_bits),
                           "cross": self.candidates.cross},
            "n_samples": self.n_samples, "measured": self.measured, "cached": self.cached,
            "seconds": self.seconds, "notes": list(self.notes), "context_bits": self.context_bits,
            "context_cells": None if self.context_cells is None else
            {n: cell_key(c) for n, c in self.context_cells.items()},
            "values": {n: {cell_key(c): v for c, v in cells.items()}
                       for n, cells in self.values.items()},
        }

    def to_table(self, max_rows: int | None = None) -> str:
        """A printable grid: one row per layer, one column per cell."""
        cells = self.candidates.cells()
        header = ["layer"] + [f"W{w}A{a}" for w, a in cells]
        rows = [header]
        for name in list(self.values)[:max_rows]:
            rows.append([name] + [f"{self.values[name][c]:.3g}" for c in cells])
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(x.ljust(w) if i == 0 else x.rjust(w)
                           for i, (x, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        around = "" if self.context_bits is None else f" around W{self.context_bits}"
        if self.context_cells is not None:
            around = " around an allocation"
        lines.append(f"proxy {self.proxy}{around} (loss {self.loss}), {self.n_samples} samples, "
                     f"{self.measured} cells measured, {self.cached} cached")
        return "\n".join(lines)


def cell_key(cell: Cell) -> str:
    """``(4, 8) -> "4,8"`` (JSON object keys must be strings)."""
    return f"{cell[0]},{cell[1]}"


def parse_cell_key(key: str) -> Cell:
    """Inverse of :func:`cell_key`."""
    w, _, a = key.partition(",")
    return (int(w), int(a))


def finite_or_zero(value: float) -> float:
    """Guard for a degenerate measurement (an empty batch): never feed NaN to the ILP."""
    return value if math.isfinite(value) else 0.0
