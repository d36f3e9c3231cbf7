"""Plain-data inputs of the bit allocator: layer options, layer specs and errors.

Everything here is a frozen, hashable value with no dependency on torch or PuLP, so a
sensitivity table measured elsewhere (or replayed from a file) can be fed to
:func:`quantune.search.allocation.allocate_bits` without a model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from quantune.errors import QuantuneError, UserInputError

#: Bit width used for a layer kept in float (fp32 weights and activations).
FLOAT_BITS = 32

#: Activation bit width assumed when an option does not name one.
DEFAULT_A_BITS = 8

#: Accepted spellings of "keep this layer float" in pins and sensitivity tables.
FLOAT_ALIASES: tuple[object, ...] = ("float", "fp32", None, FLOAT_BITS)


class AllocationInfeasibleError(UserInputError):
    """No allocation satisfies the budget under the given pins, ranges and groups.

    Attributes:
        constraint: Name of the budget constraint that must be relaxed (for example
            ``"avg_bits"``), or ``None`` when no single constraint can be relaxed alone.
        requested: The budget value the caller asked for.
        min_feasible: The smallest value of ``constraint`` that is feasible with every
            other constraint kept, in the budget's own unit (bytes, bits, BOPs, ms).
    """

    def __init__(
        self,
        message: str,
        *,
        constraint: str | None = None,
        requested: float | None = None,
        min_feasible: float | None = None,
    ) -> None:
        super().__init__(message)
        self.constraint = constraint
        self.requested = requested
        self.min_feasible = min_feasible


class AllocationSolverError(QuantuneError, RuntimeError):
    """The solver returned no usable solution (time limit hit, or a numerical failure)."""


def _check_bits(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= FLOAT_BITS:
        raise UserInputError(f"{what} must be an int in [1, {FLOAT_BITS}], got {value!r}")


@dataclass(frozen=True)
class LayerOption:
    """One candidate quantization of one layer.

    Attributes:
        w_bits: Weight bit width; ``FLOAT_BITS`` (32) means the layer stays float.
        a_bits: Activation bit width (used for BOPs and to tell options apart).
        sensitivity: Predicted loss increase when the layer uses this option (lower is
            better; may be negative when quantization happens to help).
        latency_ms: Measured or estimated latency of the layer with this option, or
            ``None`` when unknown (then a latency budget cannot be used).
    """

    w_bits: int
    a_bits: int = DEFAULT_A_BITS
    sensitivity: float = 0.0
    latency_ms: float | None = None

    def __post_init__(self) -> None:
        _check_bits(self.w_bits, "w_bits")
        _check_bits(self.a_bits, "a_bits")
        if not math.isfinite(self.sensitivity):
            raise UserInputError(f"sensitivity must be finite, got {self.sensitivity!r}")
        if self.latency_ms is not None and not (
            math.isfinite(self.latency_ms) and self.latency_ms >= 0
        ):
            raise UserInputError(f"latency_ms must be finite and >= 0, got {self.latency_ms!r}")

    @classmethod
    def float_(cls, sensitivity: float = 0.0, latency_ms: float | None = None) -> LayerOption:
        """The keep-float option (32-bit weights and activations)."""
        return cls(FLOAT_BITS, FLOAT_BITS, sensitivity, latency_ms)

    @property
    def is_float(self) -> bool:
        """Whether this option keeps the layer in float."""
        return self.w_bits == FLOAT_BITS

    @property
    def key(self) -> tuple[int, int]:
        """``(w_bits, a_bits)``: what layers of a group must share."""
        return (self.w_bits, self.a_bits)


def parse_bits_key(key: object, default_a_bits: int | None = DEFAULT_A_BITS
                   ) -> tuple[int, int | None]:
    """Turn a table key or pin (``4``, ``(4, 8)`` or ``"float"``) into
    ``(w_bits, a_bits)``; a bare int gets ``default_a_bits`` (``None``: any)."""
    if key in FLOAT_ALIASES:
        return (FLOAT_BITS, FLOAT_BITS)
    if isinstance(key, tuple) and len(key) == 2:
        return (int(key[0]), int(key[1]))
    if isinstance(key, int) and not isinstance(key, bool):
        return (key, default_a_bits)
    raise UserInputError(f"bits must be an int, a (w_bits, a_bits) pair or 'float', got {key!r}")


@dataclass(frozen=True)
class LayerSpec:
    """A quantizable layer and its candidate options.

    Attributes:
        name: Module name (for example ``"features.0"``); unique within a problem.
        params: Number of weight elements (drives size and average bits).
        macs: Multiply-accumulates per inference (drives BOPs).
        options: Candidate options, at most one per ``(w_bits, a_bits)``.
    """

    name: str
    params: int
    macs: int
    options: tuple[LayerOption, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise UserInputError(f"layer name must be a non-empty string, got {self.name!r}")
        for what, value in (("params", self.params), ("macs", self.macs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UserInputError(f"{self.name}: {what} must be an int >= 0, got {value!r}")
        object.__setattr__(self, "options", tuple(self.options))
        if not self.options:
            raise UserInputError(f"{self.name}: at least one option is required")
        keys = [o.key for o in self.options]
        if len(set(keys)) != len(keys):
            raise UserInputError(f"{self.name}: duplicate (w_bits, a_bits) options {sorted(keys)}")

    @classmethod
    def from_table(
        cls,
        name: str,
        params: int,
        macs: int,
        sensitivity: Mapping[object, float],
        latency_ms: Mapping[object, float] | None = None,
    ) -> LayerSpec:
        """Build a layer from a measured table ``{bits: loss increase}``.

        Args:
            name: Module name.
            params: Weight element count.
            macs: Multiply-accumulates per inference.
            sensitivity: Keys are ``w_bits`` (activations then default to 8), a
                ``(w_bits, a_bits)`` pair, or ``"float"``; values are loss increases.
            latency_ms: Optional latency per key (same keys as ``sensitivity``).

        Returns:
            The layer spec with one option per key, sorted by descending bits.
        """
        latency = {parse_bits_key(k): v for k, v in (latency_ms or {}).items()}
        options = []
        for raw_key, sens in sensitivity.items():
            w_bits, a_bits = parse_bits_key(raw_key)
            assert a_bits is not None  # guaranteed by the int default
            options.append(LayerOption(w_bits, a_bits, float(sens), latency.get((w_bits, a_bits))))
        unknown = set(latency) - {o.key for o in options}
        if unknown:
            raise UserInputError(f"{name}: latency given for options without sensitivity: {unknown}")
        options.sort(key=lambda o: o.key, reverse=True)
        return cls(name, params, macs, tuple(options))

    def option(self, key: tuple[int, int]) -> LayerOption | None:
        """The option with this ``(w_bits, a_bits)``, if the layer has one."""
        return next((o for o in self.options if o.key == key), None)
