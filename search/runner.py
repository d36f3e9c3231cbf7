"""``run_search``: find the best configuration of a space for an objective callable."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import optuna

from quantune.errors import UserInputError
from quantune.search.loop import Objective, SearchLoop
from quantune.search.result import SearchResult, TrialRecord, pareto_front, select_best
from quantune.search.space import SearchSpace
from quantune.search.strategies import make_sampler
from quantune.search.study import open_study
from quantune.search.target import Target

if TYPE_CHECKING:
    from optuna.pruners import BasePruner
    from optuna.samplers import BaseSampler
    from optuna.storages import BaseStorage


def _directions(directions: str | Sequence[str]) -> tuple[str, ...]:
    dirs = (directions,) if isinstance(directions, str) else tuple(directions)
    if not dirs or any(d not in ("maximize", "minimize") for d in dirs):
        raise UserInputError(
            f"directions must be a sequence of 'maximize'/'minimize', got {directions!r}"
        )
    return dirs


def run_search(
    space: SearchSpace,
    objective: Objective,
    *,
    strategy: str = "xgboost",
    n_trials: int | None = 100,
    timeout_s: float | None = None,
    storage: str | BaseStorage | None = None,
    study_name: str | None = None,
    seed: int | None = None,
    directions: str | Sequence[str] = "maximize",
    target: Target | None = None,
    progress: bool = False,
    model_descriptor: Mapping[str, float] | None = None,
    sampler: BaseSampler | None = None,
    sampler_options: Mapping[str, Any] | None = None,
    pruner: BasePruner | None = None,
    heartbeat_interval_s: int | None = None,
    max_repeats: int = 50,
) -> SearchResult:
    """Search ``space`` for the configuration that optimises ``objective``.

    Args:
        space: The configurations to search.
        objective: ``objective(config)`` or ``objective(config, handle)`` returning the
            metric (a float), or one value per direction in multi-objective mode (metric
            first, then e.g. size or latency). ``handle`` is a
            :class:`~quantune.search.pruning.TrialHandle` for reporting partial metrics
            on growing evaluation subsets and pruning hopeless configurations. An
            exception or a NaN makes the trial FAILED (message in the
            ``quantune.error`` user attribute); the search goes on.
        strategy: ``xgboost``, ``random``, ``grid``, ``genetic`` or ``tpe``.
        n_trials: Budget of evaluations (objective calls that finished) of the study,
            *including those of earlier runs*: resuming a study of 30 evaluations with
            ``n_trials=50`` evaluates 20 more. None: until timeout/target/exhaustion.
        timeout_s: Wall-time budget of this run.
        storage: None (in memory), or an Optuna storage URL / object; the study is
            resumed when ``study_name`` already exists there.
        study_name: Study name (default ``"quantune-search"``).
        seed: Seed of the sampler and of candidate repair.
        directions: ``"maximize"``/``"minimize"`` per objective.
        target: Metric target. Single objective: stop as soon as a configuration meets
            it. Several objectives: keep searching within the budget for the
            configuration meeting it that is best on the other objectives.
        progress: Show a tqdm progress bar (with ETA) of the evaluations.
        model_descriptor: Floats describing the model (layer counts, depthwise share,
            params, MACs); stored on the study and used by ``xgboost`` transfer.
        sampler: A ready Optuna sampler, overriding ``strategy``.
        sampler_options: Keyword options of the strategy's sampler.
        pruner: Optuna pruner judging reported partial metrics (e.g.
            :class:`~quantune.search.pruning.BestSoFarPruner`); default: never prune.
        heartbeat_interval_s: Several workers share the study (RDB storage): detect
            dead workers' trials by heartbeat instead of failing every RUNNING trial
            at start (see :mod:`quantune.search.study`).
        max_repeats: Stop after this many consecutive proposals of already evaluated
            configurations (a sampler that cannot find new points).

    Returns:
        A :class:`~quantune.search.result.SearchResult`; its ``best`` is the best
        configuration found even when the target was not reached.

    Raises:
        UserInputError: bad strategy, directions, or a study with other directions.
    """
    started = time.perf_counter()
    dirs = _directions(directions)
    if n_trials is not None and n_trials < 1:
        raise UserInputError(f"n_trials must be >= 1 (or None), got {n_trials}")
    options = dict(sampler_options or {})
    if strategy == "xgboost" and target is not None and len(dirs) > 1:
        options.setdefault("threshold", target.threshold(dirs[0]))
    if sampler is None:
        sampler = make_sampler(strategy, space, seed=seed, options=options)
    # Optuna logs every trial at INFO; quantune shows its own progress bar instead.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(
        storage=storage,
        study_name=study_name,
        sampler=sampler,
        pruner=pruner,
        directions=dirs,
        model_descriptor=model_descriptor,
        heartbeat_interval_s=heartbeat_interval_s,
    )
    loop = SearchLoop(
        space, objective, study,
        seed=0 if seed is None else seed, n_trials=n_trials, target=target,
        max_repeats=max_repeats, progress=progress, desc=f"search[{strategy}]",
    )
    reason = loop.precheck()
    try:
        if reason is None:
            study.optimize(loop, timeout=timeout_s, callbacks=[loop.after_trial],
                           catch=(Exception,), gc_after_trial=False)
            reason = loop.stop_reason or "timeout"
    finally:
        loop.bar.close()
    records = [TrialRecord.from_trial(space, t) for t in study.get_trials(deepcopy=False)]
    best, reached = select_best(records, dirs, target)
    return SearchResult(
        best=best,
        target_reached=reached,
        trials=records,
        pareto_front=pareto_front(records, dirs),
        n_evaluations=loop.n_eval,
        stop_reason=reason,
        study_name=study.study_name,
        directions=dirs,
        wall_s=time.perf_counter() - started,
    )
