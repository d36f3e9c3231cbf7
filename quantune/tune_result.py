"""The result of :func:`quantune.tune`: best configuration, its model, and the trial history."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quantune.config import QuantConfig
from quantune.quantized_model import QuantizedModel


@dataclass(frozen=True)
class TrialRow:
    """One trial as shown in tables and reports."""

    number: int
    label: str
    point: dict[str, Any] | None
    state: str
    metric: float | None
    size_bytes: int | None
    latency_ms: float | None
    duration_s: float | None
    error: str | None

    @classmethod
    def from_record(cls, record: Any) -> TrialRow:
        attrs = record.user_attrs or {}
        return cls(
            number=record.number,
            label=attrs.get("label", ""),
            point=record.config,
            state=record.state,
            metric=record.value,
            size_bytes=attrs.get("size_bytes"),
            latency_ms=attrs.get("latency_ms"),
            duration_s=record.duration_s,
            error=record.error,
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TuneResult:
    """What :func:`quantune.tune` found.

    ``config`` is an ordinary :class:`QuantConfig`: save it, re-apply it with
    :func:`quantune.quantize`, or gate CI on it with ``quantune check``.
    """

    config: QuantConfig
    model: QuantizedModel
    point: dict[str, Any]
    label: str
    metric_name: str
    higher_is_better: bool
    baseline_metric: float
    best_metric: float
    float_size_bytes: int
    size_bytes: int
    float_latency_ms: float | None
    latency_ms: float | None
    target_threshold: float | None
    target_reached: bool | None
    trials: list[TrialRow]
    pareto: list[TrialRow]
    objectives: tuple[str, ...]
    strategy: str
    stop_reason: str
    n_evaluations: int
    study_name: str
    storage: str | None
    wall_s: float
    layers: list[dict[str, Any]] = field(default_factory=list)
    bn_pairs: list[tuple[str, str]] = field(default_factory=list)
    unsupported: list[tuple[str, str]] = field(default_factory=list)
    n_calib_samples: int = 0
    bit_budget: dict[str, float] | None = None

    @property
    def metric_drop(self) -> float:
        """Baseline minus best (positive = worse), in metric units."""
        d = self.baseline_metric - self.best_metric
        return d if self.higher_is_better else -d

    def report(self) -> dict[str, Any]:
        """The ``report.json`` content (see :mod:`quantune.report`)."""
        from quantune.report import build_report

        return build_report(self)

    def save(self, out_dir: str, *, factory: str | None = None,
             exported_program: str | None = None) -> dict[str, str]:
        """Write model, config, reports and plots into ``out_dir`` (see :func:`quantune.report.write_outputs`)."""
        from quantune.report import write_outputs

        return write_outputs(self, out_dir, factory=factory, exported_program=exported_program)
