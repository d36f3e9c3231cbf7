"""The search loop shared by every strategy (used by :func:`quantune.search.runner.run_search`).

The loop is Optuna's own ``study.optimize`` (so heartbeats, storages and the dashboard
work as usual) around an objective wrapper that

* asks the sampler for a whole configuration, repairs it onto an explicit candidate
  list when the sampler only knows the product space (TPE, NSGA-II), and records it;
* answers a configuration the study already evaluated from the study (a *cached*
  trial, not an evaluation: finished configurations are never evaluated twice);
* calls the user's objective, recording any exception or NaN as a FAILED trial with
  its message in the ``quantune.error`` user attribute, and goes on;

and a callback that counts evaluations, updates the progress bar, and stops on the
target, the trial budget, exhaustion of the space or a sampler stuck on repeats.
"""

from __future__ import annotations

import inspect
import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import TrialState

from quantune.search.neighbourhood import project
from quantune.search.optuna_bridge import (
    CACHED_ATTR,
    ERROR_ATTR,
    REPAIRED_ATTR,
    is_stale,
    record_config,
    suggest,
    trial_key,
    visited_keys,
)
from quantune.search.pruning import Pruned, TrialHandle
from quantune.search.space import Config, SearchSpace
from quantune.search.study import count_evaluations, is_evaluation
from quantune.search.target import Target

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial

#: Longest wait for an earlier worker's trial to record its configuration (a sampler
#: fit takes well under this; a worker that died before recording is failed by its
#: heartbeat, or waited out here when the storage has none).
UNRECORDED_WAIT_S = 60.0

Objective = Callable[..., "float | Sequence[float]"]
"""``objective(config)`` or ``objective(config, handle: TrialHandle)`` -> value(s)."""


def _wants_handle(objective: Objective) -> bool:
    try:
        params = inspect.signature(objective).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: config only
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def _as_values(out: Any, n_objectives: int) -> list[float]:
    values = [float(out)] if np.ndim(out) == 0 else [float(v) for v in out]
    if len(values) != n_objectives:
        raise ValueError(f"objective returned {len(values)} values for {n_objectives} directions")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"objective returned a non-finite value: {values}")
    return values


class SearchLoop:
    """State shared by the objective wrapper and the after-trial callback."""

    def __init__(self, space: SearchSpace, objective: Objective, study: Study, *,
                 seed: int, n_trials: int | None, target: Target | None,
                 max_repeats: int, progress: bool, desc: str) -> None:
        from tqdm.auto import tqdm

        self.space, self.objective, self.study = space, objective, study
        self.seed, self.n_trials, self.target, self.max_repeats = seed, n_trials, target, max_repeats
        self.wants_handle = _wants_handle(objective)
        self.directions = [d.name.lower() for d in study.directions]
        self.multi = len(self.directions) > 1
        # Another process may write to a persistent storage (several workers): then the
        # study is re-read where it matters; an in-memory study is this process's alone.
        self.shared = not isinstance(study._storage, optuna.storages.InMemoryStorage)  # noqa: SLF001
        trials = study.get_trials(deepcopy=False)
        self.n_eval = count_evaluations(study)
        self.visited = visited_keys(space, trials)
        self.results = self._completed(trials)
        self.repeats = 0
        self.stop_reason: str | None = None
        self.bar = tqdm(total=n_trials, initial=self.n_eval, desc=desc, unit="eval",
                        disable=not progress, dynamic_ncols=True)

    def _completed(self, trials: Sequence[FrozenTrial]) -> dict[str, list[float]]:
        out = {}
        for t in trials:
            key = trial_key(self.space, t)
            if t.state == TrialState.COMPLETE and key is not None and t.values:
                out.setdefault(key, list(t.values))
        return out

    def precheck(self) -> str | None:
        """A reason not to start at all (a resumed study that is already done)."""
        if self.n_trials is not None and self.n_eval >= self.n_trials:
            return "n_trials"
        if not self.multi and self.target is not None and any(
            self.target.met(v[0], self.directions[0]) for v in self.results.values()
        ):
            return "target"
        if len(self.visited) >= self.space.size:
            return "exhausted"
        return None

    # ----------------------------------------------------------------- wrapper
    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        config: Config = suggest(self.space, trial)
        if self.space.candidates is not None and not self.space.contains(config):
            rng = np.random.default_rng([self.seed, trial.number, 0x7265])
            config = project(self.space, config, rng)
            trial.set_user_attr(REPAIRED_ATTR, True)
        key = record_config(trial, config)
        known = self.results.get(key)
        if known is None and self.shared:  # another worker may have (nearly) finished it
            self._wait_for_twin(trial.number, key)
            self.results.update(self._completed(self.study.get_trials(
                deepcopy=False, states=(TrialState.COMPLETE,))))
            known = self.results.get(key)
        if known is not None:
            trial.set_user_attr(CACHED_ATTR, True)
            return known if self.multi else known[0]
        try:
            if self.wants_handle:
                out = self.objective(config, TrialHandle(trial, self.multi))
            else:
                out = self.objective(config)
            values = _as_values(out, len(self.directions))
        except Pruned:
            raise
        except Exception as exc:
            trial.set_user_attr(ERROR_ATTR, f"{type(exc).__name__}: {exc}"[:2000])
            raise
        self.results[key] = values
        return values if self.multi else values[0]

    def _wait_for_twin(self, number: int, key: str, poll_s: float = 0.2,
                       unrecorded_wait_s: float = UNRECORDED_WAIT_S) -> None:
        """Wait while an earlier RUNNING trial (another worker) evaluates ``key``.

        Samplers skip configurations that RUNNING trials hold, but two workers asking
        at the same instant can still draw the same one. Both record it before this
        check, so the later trial sees the earlier one and waits for its result instead
        of evaluating twice; the earlier one never waits, so there is no deadlock.
        An earlier trial is created before its worker has drawn and recorded its
        configuration, so a later trial also waits (at most ``unrecorded_wait_s``)
        until every earlier RUNNING trial has recorded one: otherwise both can pass
        this check before either key is visible, and both evaluate. If the other worker
        dies, its heartbeat stops and this loop fails its trial (Optuna only does so
        when a trial starts, and every live worker may be waiting here), then this one
        evaluates.
        """
        from optuna.storages._heartbeat import is_heartbeat_enabled

        heartbeat = is_heartbeat_enabled(self.study._storage)  # noqa: SLF001
        unrecorded_deadline = time.monotonic() + unrecorded_wait_s
        while True:
            if heartbeat:
                with warnings.catch_warnings():  # "experimental" since Optuna 2.9
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(self.study)
            running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            earlier = [trial_key(self.space, t) for t in running if t.number < number]
            twin = key in earlier
            unrecorded = None in earlier and time.monotonic() < unrecorded_deadline
            if not twin and not unrecorded:
                return
            time.sleep(poll_s)

    # ----------------------------------------------------------------- callback
    def after_trial(self, study: Study, trial: FrozenTrial) -> None:
        key = trial_key(self.space, trial)
        if key is not None and not is_stale(trial):
            self.visited.add(key)
        if is_evaluation(trial):
            self.repeats = 0
            before = self.n_eval
            self.n_eval = count_evaluations(study) if self.shared else before + 1
            self.bar.update(max(self.n_eval - before, 0))
        elif trial.user_attrs.get(CACHED_ATTR):
            self.repeats += 1
        if trial.state == TrialState.COMPLETE and not self.multi:
            best = max(v[0] if self.directions[0] == "maximize" else -v[0]
                       for v in self.results.values())
            self.bar.set_postfix(best=best if self.directions[0] == "maximize" else -best)
        reason = None
        if (not self.multi and self.target is not None and trial.state == TrialState.COMPLETE
                and self.target.met(trial.values[0], self.directions[0])):
            reason = "target"
        elif self.n_trials is not None and self.n_eval >= self.n_trials:
            reason = "n_trials"
        elif len(self.visited) >= self.space.size:
            reason = "exhausted"
        elif self.repeats >= self.max_repeats:
            reason = "stuck"
        if reason is not None:
            self.stop_reason = reason
            study.stop()
