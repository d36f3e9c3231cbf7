"""Accuracy targets: "at most ``max_drop`` below the baseline metric"."""

from __future__ import annotations

from dataclasses import dataclass

from quantune.errors import UserInputError


@dataclass(frozen=True)
class Target:
    """A target on the search's first objective (the metric).

    Args:
        baseline: The reference metric (e.g. the float model's top-1).
        max_drop: Allowed degradation: metric points when ``relative`` is False,
            a fraction of the baseline (0.01 = 1 %) when True.
        relative: Whether ``max_drop`` is relative to ``baseline``.

    Example:
        >>> Target(baseline=76.0, max_drop=0.5).threshold("maximize")
        75.5
        >>> Target(baseline=2.0, max_drop=0.1, relative=True).threshold("minimize")
        2.2
    """

    baseline: float
    max_drop: float
    relative: bool = False

    def __post_init__(self) -> None:
        if self.max_drop < 0:
            raise UserInputError(f"max_drop must be >= 0, got {self.max_drop}")
        if self.relative and self.max_drop >= 1:
            raise UserInputError(
                f"a relative max_drop is a fraction of the baseline (0.01 = 1 %), got "
                f"{self.max_drop}; pass relative=False for an absolute drop"
            )

    def margin(self) -> float:
        """The allowed degradation in metric units."""
        return self.max_drop * abs(self.baseline) if self.relative else self.max_drop

    def threshold(self, direction: str = "maximize") -> float:
        """The worst metric value that still meets the target."""
        name = str(getattr(direction, "name", direction)).lower()
        if name == "maximize":
            return self.baseline - self.margin()
        if name == "minimize":
            return self.baseline + self.margin()
        raise UserInputError(f"direction must be 'maximize' or 'minimize', got {direction!r}")

    def met(self, value: float, direction: str = "maximize") -> bool:
        """Whether a metric ``value`` meets the target."""
        limit = self.threshold(direction)
        name = str(getattr(direction, "name", direction)).lower()
        # A tiny tolerance: 69.728 - 0.1 must accept 69.628 despite binary rounding.
        eps = 1e-9 * max(1.0, abs(limit))
        return value >= limit - eps if name == "maximize" else value <= limit + eps
