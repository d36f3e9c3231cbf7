"""Cheap evaluation: report intermediate metrics, stop hopeless configurations early.

An objective that evaluates on growing subsets of the evaluation set (say 10 %, 30 %,
100 %) reports each partial metric through its :class:`TrialHandle`; when the pruner
judges the configuration hopeless the objective raises :class:`Pruned` (or calls
:meth:`TrialHandle.prune_if_hopeless`, which does both) and the search moves on. The
trial is recorded as PRUNED, counts as an evaluation, and is never proposed again.

The default pruner, :class:`BestSoFarPruner`, compares a partial metric with the best
*final* metric so far: a configuration more than ``margin`` below it on a subset is
very unlikely to catch up on the full set.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import optuna
from optuna.pruners import BasePruner
from optuna.trial import TrialState

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial

Pruned = optuna.TrialPruned
"""Raise from an objective to stop the current configuration (recorded as PRUNED)."""


class BestSoFarPruner(BasePruner):
    """Prune when a partial metric is ``margin`` worse than the best final metric.

    Args:
        margin: Allowed shortfall in metric units (e.g. 2.0 top-1 points). Partial
            metrics on small subsets are noisy, so keep it a few standard errors wide.
        n_startup: Never prune before this many trials completed.
        min_step: Never prune at a step below this one (e.g. the first subset size).
    """

    def __init__(self, margin: float, n_startup: int = 3, min_step: int = 0) -> None:
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.margin = margin
        self.n_startup = n_startup
        self.min_step = min_step

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.min_step:
            return False
        value = trial.intermediate_values[step]
        if not math.isfinite(value):
            return True
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(done) < self.n_startup:
            return False
        finals = [t.value for t in done if t.value is not None and math.isfinite(t.value)]
        if not finals:
            return False
        if study.direction == optuna.study.StudyDirection.MAXIMIZE:
            return value < max(finals) - self.margin
        return value > min(finals) + self.margin


class TrialHandle:
    """What an objective may use of its trial: report, prune, annotate.

    Multi-objective studies cannot prune (Optuna reports only one intermediate value
    per step): there :meth:`should_prune` is always False.
    """

    def __init__(self, trial: optuna.Trial, multi_objective: bool) -> None:
        self._trial = trial
        self._multi = multi_objective

    @property
    def number(self) -> int:
        """The trial's number in its study."""
        return self._trial.number

    def report(self, value: float, step: int) -> None:
        """Record the metric measured on the ``step``-th evaluation subset (or its size)."""
        if not self._multi:
            self._trial.report(float(value), int(step))

    def should_prune(self) -> bool:
        """Whether the pruner judges this configuration hopeless."""
        return (not self._multi) and self._trial.should_prune()

    def prune_if_hopeless(self, value: float, step: int) -> None:
        """Report ``value`` at ``step`` and raise :class:`Pruned` when hopeless."""
        self.report(value, step)
        if self.should_prune():
            raise Pruned(f"pruned at step {step} with partial metric {value:.4g}")

    def set_attr(self, key: str, value: Any) -> None:
        """Store a JSON-able annotation on the trial (e.g. model size, latency)."""
        self._trial.set_user_attr(key, value)
