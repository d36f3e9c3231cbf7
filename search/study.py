"""Opening, resuming and cleaning up the Optuna study a search runs in.

Storage: ``None`` is an in-memory study (gone when the process ends); a string is any
Optuna storage URL, e.g. ``sqlite:///out/search.db`` (the CLI default, one file in the
output folder) or ``postgresql://...`` for several workers on several machines.

Stale trials, the choice made here: a trial left RUNNING by a process that was killed
never finished, so it must neither block its configuration forever nor be counted.

* Single worker (``heartbeat_interval_s=None``, the default): when a run starts,
  *every* RUNNING or WAITING trial of the study is by definition left over from a dead
  run, and is marked FAILED with the user attribute ``quantune.stale = True``. Its
  configuration may be proposed again and it does not count toward ``n_trials``.
  Do not use this mode with several live workers on one study: a starting worker would
  fail the others' running trials.
* Several workers (``heartbeat_interval_s`` set, RDB storages only): each running trial
  sends a heartbeat; Optuna fails trials whose heartbeat is older than twice the
  interval. Such a trial has no ``quantune.error`` attribute (the runner sets one on
  every failure of the objective itself), which is how it is recognised as stale.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from quantune.errors import UserInputError
from quantune.search.optuna_bridge import CACHED_ATTR, DESCRIPTOR_ATTR, STALE_ATTR, is_stale

if TYPE_CHECKING:
    from optuna.pruners import BasePruner
    from optuna.samplers import BaseSampler
    from optuna.study import Study
    from optuna.trial import FrozenTrial

DEFAULT_STUDY_NAME = "quantune-search"
_FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)


def open_study(
    *,
    storage: str | optuna.storages.BaseStorage | None,
    study_name: str | None,
    sampler: BaseSampler,
    pruner: BasePruner | None,
    directions: Sequence[str],
    model_descriptor: Mapping[str, float] | None = None,
    heartbeat_interval_s: int | None = None,
) -> Study:
    """Create the study, or load it when ``storage`` already holds ``study_name``.

    Raises:
        UserInputError: the existing study has other directions, or heartbeats were
            asked for on a storage that is not an RDB URL.
    """
    if heartbeat_interval_s is not None:
        if not isinstance(storage, str) or "://" not in storage:
            raise UserInputError(
                "heartbeat_interval_s needs an RDB storage URL (sqlite:///..., postgresql://...)"
            )
        with warnings.catch_warnings():
            # Heartbeats are "experimental" in Optuna's API, stable in behaviour since 2.9.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                storage,
                heartbeat_interval=int(heartbeat_interval_s),
                grace_period=2 * int(heartbeat_interval_s),
            )
    name = study_name or DEFAULT_STUDY_NAME
    study = optuna.create_study(
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        study_name=name,
        directions=list(directions),
        load_if_exists=True,
    )
    have = [d.name.lower() for d in study.directions]
    if have != [d.lower() for d in directions]:
        raise UserInputError(
            f"study {name!r} in this storage optimises {have}, not {list(directions)}; "
            f"use another study name or the same directions"
        )
    if model_descriptor:
        study.set_user_attr(DESCRIPTOR_ATTR, {k: float(v) for k, v in model_descriptor.items()})
    if heartbeat_interval_s is None:
        fail_left_over_trials(study)
    return study


def fail_left_over_trials(study: Study) -> int:
    """Mark every RUNNING/WAITING trial FAILED and stale; return how many.

    Only correct when no other process works on the study (see the module docstring).
    """
    storage = study._storage  # noqa: SLF001 - Optuna exposes no public accessor
    left = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    for trial in left:
        # Attributes first: a finished trial can no longer be annotated.
        storage.set_trial_user_attr(trial._trial_id, STALE_ATTR, True)  # noqa: SLF001
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # noqa: SLF001
    return len(left)


def is_evaluation(trial: FrozenTrial) -> bool:
    """Whether ``trial`` is a finished objective call (counts toward ``n_trials``)."""
    return (
        trial.state in _FINISHED
        and not is_stale(trial)
        and not trial.user_attrs.get(CACHED_ATTR, False)
    )


def count_evaluations(study: Study) -> int:
    """Finished objective calls of the study, by every run and worker so far."""
    return sum(is_evaluation(t) for t in study.get_trials(deepcopy=False, states=_FINISHED))
