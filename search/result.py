"""What a search returns: the best configuration, the history, the Pareto front."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from quantune.search.optuna_bridge import CACHED_ATTR, ERROR_ATTR, STALE_ATTR, trial_config
from quantune.search.scoring import pareto_ranks, signs
from quantune.search.space import Config, SearchSpace
from quantune.search.target import Target

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial


@dataclass(frozen=True)
class TrialRecord:
    """One trial of the study, in plain data.

    Attributes:
        number: Trial number in the study.
        config: The evaluated configuration (None if it never got one).
        values: Objective values (None unless COMPLETE).
        state: ``"COMPLETE"``, ``"FAIL"``, ``"PRUNED"``, ``"RUNNING"``...
        error: Error message of a failed trial.
        duration_s: Wall time of the trial.
        cached: Whether the values were copied from an earlier trial of the same
            configuration instead of evaluated.
        stale: Whether the trial was failed because its process died.
        user_attrs: The trial's other annotations.
    """

    number: int
    config: Config | None
    values: tuple[float, ...] | None
    state: str
    error: str | None = None
    duration_s: float | None = None
    cached: bool = False
    stale: bool = False
    user_attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def value(self) -> float | None:
        """The first objective (the metric)."""
        return None if self.values is None else self.values[0]

    @classmethod
    def from_trial(cls, space: SearchSpace, trial: FrozenTrial) -> TrialRecord:
        """Convert an Optuna trial."""
        duration = trial.duration.total_seconds() if trial.duration is not None else None
        return cls(
            number=trial.number,
            config=trial_config(space, trial),
            values=tuple(float(v) for v in trial.values) if trial.values else None,
            state=trial.state.name,
            error=trial.user_attrs.get(ERROR_ATTR),
            duration_s=duration,
            cached=bool(trial.user_attrs.get(CACHED_ATTR, False)),
            stale=bool(trial.user_attrs.get(STALE_ATTR, False)),
            user_attrs={k: v for k, v in trial.user_attrs.items() if not k.startswith("quantune.")},
        )


@dataclass(frozen=True)
class SearchResult:
    """The outcome of :func:`quantune.search.runner.run_search`.

    Attributes:
        best: Best completed trial: the best metric in single-objective mode; in
            multi-objective mode with a target, the trial meeting the target that is best
            on the secondary objectives (else the best metric). None only when no trial
            completed at all (every configuration failed).
        target_reached: Whether ``best`` meets the target (False without a target).
        trials: Every trial, in order.
        pareto_front: Non-dominated completed trials (the best one in single-objective).
        n_evaluations: Objective calls that finished (complete, failed or pruned), this
            run and earlier runs of the study; cached repeats and stale trials excluded.
        stop_reason: Why the loop ended: ``"target"``, ``"n_trials"``, ``"timeout"``,
            ``"exhausted"`` (every configuration visited) or ``"stuck"`` (the sampler
            kept repeating visited configurations).
        study_name: The Optuna study name.
        directions: Optimisation direction per objective.
        wall_s: Wall time of this run.
    """

    best: TrialRecord | None
    target_reached: bool
    trials: list[TrialRecord]
    pareto_front: list[TrialRecord]
    n_evaluations: int
    stop_reason: str
    study_name: str
    directions: tuple[str, ...]
    wall_s: float

    @property
    def best_config(self) -> Config | None:
        """Configuration of :attr:`best`."""
        return None if self.best is None else self.best.config

    @property
    def best_value(self) -> float | None:
        """Metric of :attr:`best`."""
        return None if self.best is None else self.best.value

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (for ``report.json``)."""
        states: dict[str, int] = {}
        for t in self.trials:
            states[t.state] = states.get(t.state, 0) + 1
        return {
            "study_name": self.study_name,
            "directions": list(self.directions),
            "stop_reason": self.stop_reason,
            "target_reached": self.target_reached,
            "n_evaluations": self.n_evaluations,
            "trial_states": states,
            "wall_s": self.wall_s,
            "best": None if self.best is None else asdict(self.best),
            "pareto_front": [asdict(t) for t in self.pareto_front],
            "history": [
                {"number": t.number, "state": t.state, "values": t.values, "cached": t.cached}
                for t in self.trials
            ],
        }


def select_best(
    records: Sequence[TrialRecord], directions: Sequence[str], target: Target | None
) -> tuple[TrialRecord | None, bool]:
    """The best completed record and whether it meets ``target``."""
    done = [r for r in records if r.state == "COMPLETE" and r.values is not None]
    if not done:
        return None, False
    sgn = signs(directions)
    signed = np.asarray([r.values for r in done], dtype=np.float64) * sgn[None, :]
    metric_best = _smallest_of_best(done, signed[:, 0])
    if target is None:
        return metric_best, False
    ok = [i for i, r in enumerate(done) if target.met(r.values[0], directions[0])]  # type: ignore[index]
    if not ok:
        return metric_best, False
    if len(directions) == 1:
        return metric_best, True
    # Among configurations meeting the target: best secondary objectives (lexicographic),
    # then best metric.
    key = [(*signed[i, 1:], signed[i, 0]) for i in ok]
    return done[ok[max(range(len(ok)), key=lambda j: key[j])]], True


TIE_ATTRS = ("size_bytes", "latency_ms")
"""Trial annotations that break ties on the metric, in order (smaller wins)."""


def _smallest_of_best(done: Sequence[TrialRecord], signed_metric: np.ndarray) -> TrialRecord:
    """The record with the best metric; among equal metrics, the smallest, then fastest.

    Metrics computed on a finite evaluation set tie often (top-1 on 500 images moves in
    0.2-point steps, and many configurations score exactly the float model's value):
    between two configurations that score the same, the user wants the smaller model.
    Records without the annotations rank after those with them; the earliest trial wins
    what remains tied.
    """
    best = float(np.max(signed_metric))
    tied = [i for i, v in enumerate(signed_metric) if v >= best - 1e-9 * max(1.0, abs(best))]

    def key(i: int) -> tuple[float, ...]:
        attrs = done[i].user_attrs
        return tuple(_attr(attrs, name) for name in TIE_ATTRS) + (float(i),)

    return done[min(tied, key=key)]


def _attr(attrs: dict[str, Any], name: str) -> float:
    value = attrs.get(name)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.inf
    return number if math.isfinite(number) else math.inf


def pareto_front(records: Sequence[TrialRecord], directions: Sequence[str]) -> list[TrialRecord]:
    """Completed, non-dominated, non-cached records (objectives sign-corrected)."""
    done = [r for r in records if r.state == "COMPLETE" and r.values is not None and not r.cached]
    if not done:
        return []
    signed = np.asarray([r.values for r in done], dtype=np.float64) * signs(directions)[None, :]
    ranks = pareto_ranks(signed)
    return [r for r, k in zip(done, ranks, strict=True) if k == 0]
