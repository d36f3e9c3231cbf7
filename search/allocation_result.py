"""The result of a bit allocation: per-layer choices, totals, table and JSON form."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from quantune.errors import ConfigVersionError, UserInputError
from quantune.search.allocation_budget import Budget
from quantune.search.allocation_types import FLOAT_BITS

#: Version of the JSON layout written by :meth:`Allocation.to_json`.
ALLOCATION_JSON_VERSION = 1


@dataclass(frozen=True)
class LayerChoice:
    """The option chosen for one layer, with the data the totals are computed from."""

    name: str
    params: int
    macs: int
    w_bits: int
    a_bits: int
    sensitivity: float
    latency_ms: float | None = None

    @property
    def is_float(self) -> bool:
        """Whether the layer is kept in float."""
        return self.w_bits == FLOAT_BITS


@dataclass(frozen=True)
class Allocation:
    """Per-layer bit widths chosen under a budget.

    Totals are properties computed from ``layers``, so they can never disagree with the
    choices (and the JSON form stores them only for readers, not for loading).

    Attributes:
        layers: The choice of every layer, in the order the layers were given.
        budget: The budget the allocation was made for.
        policy: ``"ilp"``, ``"greedy"``, ``"uniform"`` or ``"exhaustive"``.
        status: ``"optimal"`` (proven), ``"feasible"`` (solver time limit hit before
            proving optimality), ``"heuristic"`` (baseline policies) or
            ``"alternative"`` (a runner-up of :func:`~quantune.search.allocation.ilp_alternatives`).
            ``"relinearized"``: the optimum of the program over a table measured around an
            earlier allocation (:mod:`quantune.search.allocation_relinearize`); its layer
            sensitivities are the float-linearized table's.
        binding: Budget fields that limited the allocation. For ``ilp`` and
            ``exhaustive``: those whose removal would lower the predicted loss. For the
            baselines: those that forced the last step down.
    """

    layers: tuple[LayerChoice, ...]
    budget: Budget
    policy: str
    status: str
    binding: tuple[str, ...] = ()

    @property
    def predicted_loss(self) -> float:
        """Summed sensitivity of the chosen options (the ILP's objective)."""
        return math.fsum(c.sensitivity for c in self.layers)

    @property
    def weight_bits_total(self) -> int:
        """Total weight bits, ``sum(params * w_bits)``."""
        return sum(c.params * c.w_bits for c in self.layers)

    @property
    def size_bytes(self) -> float:
        """Weight storage in bytes (float layers at 4 bytes per weight)."""
        return self.weight_bits_total / 8

    @property
    def avg_bits(self) -> float:
        """Average weight bits, weighted by parameter count."""
        params = sum(c.params for c in self.layers)
        return self.weight_bits_total / params if params else 0.0

    @property
    def bops(self) -> int:
        """Bit operations, ``sum(macs * w_bits * a_bits)``."""
        return sum(c.macs * c.w_bits * c.a_bits for c in self.layers)

    @property
    def latency_ms(self) -> float | None:
        """Summed latency estimate, or ``None`` if an option had no latency."""
        lat = [c.latency_ms for c in self.layers]
        return None if None in lat else sum(lat)  # type: ignore[arg-type]

    @property
    def weight_bits(self) -> dict[str, int | None]:
        """``{layer: w_bits}``, ``None`` for float layers (as in ``LayerQuantConfig``)."""
        return {c.name: None if c.is_float else c.w_bits for c in self.layers}

    @property
    def bits(self) -> dict[str, tuple[int, int]]:
        """``{layer: (w_bits, a_bits)}``; float layers are ``(32, 32)``."""
        return {c.name: (c.w_bits, c.a_bits) for c in self.layers}

    def summary(self) -> dict[str, float | None]:
        """The totals as a dict (predicted loss, size, average bits, BOPs, latency)."""
        return {"predicted_loss": self.predicted_loss, "size_bytes": self.size_bytes,
                "avg_bits": self.avg_bits, "bops": self.bops, "latency_ms": self.latency_ms}

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict with a version field."""
        return {
            "version": ALLOCATION_JSON_VERSION,
            "policy": self.policy,
            "status": self.status,
            "budget": self.budget.to_dict(),
            "binding": list(self.binding),
            "summary": self.summary(),
            "layers": [asdict(c) for c in self.layers],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """Serialize to JSON (floats round-trip exactly)."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> Allocation:
        """Inverse of :meth:`to_dict` (the ``summary`` is recomputed, not read)."""
        version = data.get("version")
        if not isinstance(version, int) or version > ALLOCATION_JSON_VERSION:
            raise ConfigVersionError(
                f"allocation JSON version {version!r} is not supported by this quantune "
                f"(reads up to {ALLOCATION_JSON_VERSION}); upgrade quantune")
        try:
            layers = tuple(LayerChoice(**layer) for layer in data["layers"])
            return cls(layers, Budget.from_dict(data["budget"]), data["policy"],
                       data["status"], tuple(data.get("binding", ())))
        except (KeyError, TypeError) as exc:
            raise UserInputError(f"malformed allocation JSON: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> Allocation:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> Path:
        """Write the JSON form to ``path`` and return it."""
        path = Path(path)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Allocation:
        """Read an allocation written by :meth:`save`."""
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    def to_table(self) -> str:
        """A printable table: one row per layer, then totals against the budget."""
        header = ("layer", "W", "A", "params", "MACs", "sensitivity", "latency_ms")
        rows = [header] + [
            (c.name, "float" if c.is_float else str(c.w_bits),
             "float" if c.is_float else str(c.a_bits), f"{c.params:,}", f"{c.macs:,}",
             f"{c.sensitivity:.4g}", "-" if c.latency_ms is None else f"{c.latency_ms:.4g}")
            for c in self.layers]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                           for i, (cell, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.append("-" * len(lines[0]))
        used = self.summary()
        lines.append(f"policy {self.policy} ({self.status}), predicted loss "
                     f"{self.predicted_loss:.6g}")
        for name in ("size_bytes", "avg_bits", "bops", "latency_ms"):
            value = used[name]
            limit = getattr(self.budget, name)
            text = f"{name:<11} {'-' if value is None else f'{value:,.6g}':>14}"
            if limit is not None:
                text += f" / {limit:,.6g}" + ("  (binding)" if name in self.binding else "")
            lines.append(text)
        return "\n".join(lines)
