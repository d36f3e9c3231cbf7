"""The user's budget and its exact translation into linear resource limits.

Size, average bits and BOPs are all integer sums (``params * w_bits`` and
``macs * w_bits * a_bits``), so they are compared in exact integer arithmetic: a budget
of 4.5 average bits over ``T`` weights becomes the integer limit ``floor(4.5 * T)`` on the
total weight bits, computed with :class:`fractions.Fraction` so that float rounding can
never admit an allocation one bit over budget. Latency is a float sum and is compared
with a relative tolerance of ``LATENCY_RTOL`` (it is an estimate anyway).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from fractions import Fraction

from quantune.errors import UserInputError

#: Relative tolerance on latency sums (float addition order differs between solvers).
LATENCY_RTOL = 1e-9

#: Which resource each budget field limits; size and average bits both limit the total
#: number of weight bits.
RESOURCE_OF = {
    "size_bytes": "weight_bits",
    "avg_bits": "weight_bits",
    "bops": "bops",
    "latency_ms": "latency_ms",
}

_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9,
               "kib": 2**10, "mib": 2**20, "gib": 2**30}
_COUNT_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_CLI_NAMES = {"size": "size_bytes", "avg-bits": "avg_bits", "bops": "bops",
              "latency-ms": "latency_ms"}


@dataclass(frozen=True)
class Budget:
    """Upper limits on the allocation; any combination, ``None`` means unconstrained.

    Attributes:
        size_bytes: Total weight storage, ``sum(params * w_bits) / 8`` (float layers
            count 32 bits per weight).
        avg_bits: Average weight bits, weighted by parameter count.
        bops: Bit operations, ``sum(macs * w_bits * a_bits)``.
        latency_ms: Sum of the per-layer latency estimates of the chosen options.
    """

    size_bytes: float | None = None
    avg_bits: float | None = None
    bops: float | None = None
    latency_ms: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise UserInputError(f"budget {f.name} must be finite and >= 0, got {value!r}")

    def items(self) -> list[tuple[str, float]]:
        """The active limits as ``(field name, value)``, in a fixed order."""
        return [(f.name, getattr(self, f.name)) for f in fields(self)
                if getattr(self, f.name) is not None]

    def to_dict(self) -> dict[str, float]:
        """The active limits as a JSON-ready dict."""
        return dict(self.items())

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> Budget:
        """Inverse of :meth:`to_dict`."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UserInputError(f"unknown budget fields {sorted(unknown)}; use {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_string(cls, text: str) -> Budget:
        """Parse the CLI form, e.g. ``"avg-bits=4.5"`` or ``"size=2.5MB,latency-ms=3"``.

        Sizes accept B/KB/MB/GB (powers of 1000) and KiB/MiB/GiB; BOPs accept K/M/G/T.
        """
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, raw = part.partition("=")
            key = _CLI_NAMES.get(name.strip().lower())
            if not sep or key is None:
                raise UserInputError(
                    f"cannot parse budget {part!r}; use one of "
                    f"{', '.join(n + '=VALUE' for n in _CLI_NAMES)}")
            units = _SIZE_UNITS if key == "size_bytes" else _COUNT_UNITS
            match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([A-Za-z]*)\s*", raw)
            unit = match.group(2).lower() if match else ""
            if match is None or unit not in units or key in ("avg_bits", "latency_ms") and unit:
                raise UserInputError(f"cannot parse budget value {raw!r} for {name}")
            values[key] = float(match.group(1)) * units[unit]
        return cls(**values)


@dataclass(frozen=True)
class BudgetRow:
    """One budget field as a linear limit ``sum(resource) <= limit``.

    Attributes:
        name: The budget field (``"size_bytes"``, ``"avg_bits"``, ``"bops"``,
            ``"latency_ms"``).
        requested: The value the user asked for, in the field's unit.
        limit: The same limit in resource units (total weight bits, BOPs, or ms); an
            int for the exact integer resources.
        total_params: Parameter count of the whole problem (converts bits to average).
    """

    name: str
    requested: float
    limit: int | float
    total_params: int

    @property
    def resource(self) -> str:
        """``"weight_bits"``, ``"bops"`` or ``"latency_ms"``."""
        return RESOURCE_OF[self.name]

    def satisfied(self, used: float) -> bool:
        """Whether a resource total ``used`` respects this limit (exactly, or within
        ``LATENCY_RTOL`` for latency)."""
        if self.resource == "latency_ms":
            return used <= self.limit + LATENCY_RTOL * max(1.0, abs(self.limit))
        return used <= self.limit

    def to_budget_units(self, used: float) -> float:
        """Express a resource total in this field's unit (bytes, average bits...)."""
        if self.name == "size_bytes":
            return used / 8
        if self.name == "avg_bits":
            return used / self.total_params if self.total_params else 0.0
        return float(used)

    def min_budget_for(self, used: float) -> float:
        """The smallest budget value of this field that admits a resource total ``used``.

        The float is rounded up, ulp by ulp, until the exact limit it produces admits
        ``used``; so the returned value is feasible and any smaller float is not.
        """
        value = self.to_budget_units(used)
        if self.resource == "latency_ms":
            return value
        while _exact_limit(self.name, value, self.total_params) < used:
            value = math.nextafter(value, math.inf)
        return value


def _exact_limit(name: str, value: float, total_params: int) -> int:
    """Integer limit on the resource implied by a budget value, without float error."""
    exact = Fraction(value)
    if name == "size_bytes":
        exact *= 8
    elif name == "avg_bits":
        exact *= total_params
    return math.floor(exact)


def budget_rows(budget: Budget, total_params: int) -> tuple[BudgetRow, ...]:
    """Translate a budget into resource limits, in ``Budget`` field order."""
    rows = []
    for name, value in budget.items():
        limit: int | float = (
            float(value) if name == "latency_ms" else _exact_limit(name, value, total_params))
        rows.append(BudgetRow(name, float(value), limit, total_params))
    return tuple(rows)
