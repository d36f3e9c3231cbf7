"""Which trial a search returns: best metric, then the smaller and faster model on ties."""

from __future__ import annotations

from quantune.search.result import TrialRecord, select_best
from quantune.search.target import Target


def _record(n: int, metric: float, **attrs: float) -> TrialRecord:
    return TrialRecord(number=n, config={"n": n}, values=(metric,), state="COMPLETE", user_attrs=dict(attrs))


def test_equal_metrics_prefer_the_smaller_then_faster_model() -> None:
    records = [
        _record(0, 99.0, size_bytes=30_000, latency_ms=2.0),
        _record(1, 99.0, size_bytes=15_000, latency_ms=3.0),
        _record(2, 99.0, size_bytes=15_000, latency_ms=2.5),
        _record(3, 98.8, size_bytes=8_000, latency_ms=1.0),
        _record(4, 99.0),  # no annotations: ranks after the annotated ties
    ]
    best, reached = select_best(records, ["maximize"], None)
    assert best is not None and best.number == 2 and not reached
    best, reached = select_best(records, ["maximize"], Target(99.0, 0.5))
    assert best is not None and best.number == 2 and reached


def test_a_better_metric_beats_a_smaller_model() -> None:
    records = [_record(0, 99.0, size_bytes=10), _record(1, 99.2, size_bytes=1_000)]
    best, _ = select_best(records, ["maximize"], None)
    assert best is not None and best.number == 1


def test_minimised_metrics_tie_the_same_way() -> None:
    records = [_record(0, 0.25, size_bytes=500), _record(1, 0.25, size_bytes=100), _record(2, 0.3, size_bytes=1)]
    best, _ = select_best(records, ["minimize"], None)
    assert best is not None and best.number == 1


def test_unannotated_ties_keep_the_earliest_trial() -> None:
    best, _ = select_best([_record(5, 1.0), _record(6, 1.0)], ["maximize"], None)
    assert best is not None and best.number == 5
