"""The glue between a :class:`SearchSpace` and Optuna trials.

Optuna only stores parameter values of primitive types. A categorical dimension whose
values are all primitives (None/bool/int/float/str) is stored as those values, so the
dashboard shows them as they are; any other categorical (lists, dicts) is stored by its
value index. An ordinal dimension is stored as an integer index, an
``IntDistribution``, so TPE and NSGA-II can exploit its order.

The evaluated configuration is also stored in the trial's user attributes
(:data:`CONFIG_ATTR`, :data:`KEY_ATTR`): it is what other workers, the transfer cost
model and a resumed run read back, and it may differ from the sampled params when a
proposal was repaired onto an explicit candidate list.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from quantune.search.space import Config, Dimension, SearchSpace, config_key

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution
    from optuna.trial import FrozenTrial

CONFIG_ATTR = "quantune.config"
KEY_ATTR = "quantune.config_key"
ERROR_ATTR = "quantune.error"
STALE_ATTR = "quantune.stale"
CACHED_ATTR = "quantune.cached"
REPAIRED_ATTR = "quantune.repaired"
DESCRIPTOR_ATTR = "quantune.model_descriptor"
"""Study user attribute: the model descriptor dict (floats) used by transfer."""

_PRIMITIVES = (type(None), bool, int, float, str)


def _stores_values(dim: Dimension) -> bool:
    return dim.kind == "categorical" and all(isinstance(v, _PRIMITIVES) for v in dim.values)


def distribution(dim: Dimension) -> BaseDistribution:
    """The Optuna distribution that stores ``dim``."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if _stores_values(dim):
        return CategoricalDistribution(dim.values)
    if dim.kind == "categorical":
        return CategoricalDistribution(tuple(range(len(dim))))
    return IntDistribution(0, len(dim) - 1)


def distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    """Optuna distributions of every dimension, by name."""
    return {d.name: distribution(d) for d in space.dimensions}


def to_params(space: SearchSpace, config: Mapping[str, Any]) -> dict[str, Any]:
    """Optuna parameter values that encode ``config``."""
    out: dict[str, Any] = {}
    for d in space.dimensions:
        index = d.index(config[d.name])
        out[d.name] = d.values[index] if _stores_values(d) else index
    return out


def from_params(space: SearchSpace, params: Mapping[str, Any]) -> Config | None:
    """The configuration encoded by Optuna ``params``; None if a dimension is missing."""
    out: Config = {}
    for d in space.dimensions:
        if d.name not in params:
            return None
        raw = params[d.name]
        out[d.name] = d.values[d.index(raw)] if _stores_values(d) else d.values[int(raw)]
    return out


def suggest(space: SearchSpace, trial: optuna.Trial) -> Config:
    """Ask ``trial`` for every dimension (jointly sampled by a relative sampler)."""
    params: dict[str, Any] = {}
    for d in space.dimensions:
        if _stores_values(d):
            params[d.name] = trial.suggest_categorical(d.name, d.values)
        elif d.kind == "categorical":
            params[d.name] = trial.suggest_categorical(d.name, tuple(range(len(d))))
        else:
            params[d.name] = trial.suggest_int(d.name, 0, len(d) - 1)
    config = from_params(space, params)
    assert config is not None  # every dimension was just suggested
    return config


def trial_config(space: SearchSpace, trial: FrozenTrial) -> Config | None:
    """The configuration ``trial`` evaluated (or is evaluating), if known and in ``space``."""
    stored = trial.user_attrs.get(CONFIG_ATTR)
    if stored is not None:
        try:
            config = json.loads(stored) if isinstance(stored, str) else dict(stored)
            return space.validate(config)
        except (ValueError, TypeError, KeyError):
            return None
    try:
        return from_params(space, trial.params)
    except (ValueError, IndexError, TypeError):
        return None


def trial_key(space: SearchSpace, trial: FrozenTrial) -> str | None:
    """:func:`config_key` of the trial's configuration, if known."""
    key = trial.user_attrs.get(KEY_ATTR)
    if isinstance(key, str):
        return key
    config = trial_config(space, trial)
    return None if config is None else config_key(config)


def is_stale(trial: FrozenTrial) -> bool:
    """Whether ``trial`` failed without finishing its evaluation.

    That is a trial tagged :data:`STALE_ATTR` when a restarted run found it RUNNING,
    or any FAILED trial without an :data:`ERROR_ATTR` (the runner records one for
    every failure of the objective; a trial failed by Optuna's heartbeat check or
    interrupted by Ctrl-C has none).
    """
    if trial.state.name != "FAIL":  # by name: keeps this module free of an optuna import
        return False
    return bool(trial.user_attrs.get(STALE_ATTR, False)) or ERROR_ATTR not in trial.user_attrs


def visited_keys(space: SearchSpace, trials: Iterable[FrozenTrial]) -> set[str]:
    """Keys of configurations already evaluated or being evaluated by any worker.

    Trials failed as stale (their process was killed mid-evaluation) do not count:
    they never finished, so their configuration may be proposed again.
    """
    keys = set()
    for t in trials:
        if is_stale(t):
            continue
        key = trial_key(space, t)
        if key is not None:
            keys.add(key)
    return keys


def record_config(trial: optuna.Trial, config: Mapping[str, Any]) -> str:
    """Store the evaluated configuration on ``trial``; return its key."""
    key = config_key(config)
    trial.set_user_attr(CONFIG_ATTR, dict(config))
    trial.set_user_attr(KEY_ATTR, key)
    return key
