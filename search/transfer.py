"""Transfer (the Quantune paper's XGB-T): learn from other models' studies.

Every study that quantune writes stores its model descriptor (a dict of floats: layer
counts, depthwise share, parameters, MACs, ...) as a study user attribute. When a new
model is searched in the same storage, the completed trials of the *other* studies
whose configurations belong to the same space become extra training rows of the cost
model: their configuration features plus their model's descriptor, in their own
ranking group, weighted lower than the study's own trials. The cost model thus starts
from "what worked on similar models" and is corrected by the new model's measurements.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from quantune.search.optuna_bridge import DESCRIPTOR_ATTR, trial_config
from quantune.search.scoring import signs
from quantune.search.space import SearchSpace

if TYPE_CHECKING:
    from optuna.storages import BaseStorage


@dataclass(frozen=True)
class StudyRows:
    """Completed trials of one other study, ready for the cost model.

    Attributes:
        study_name: Name of the source study.
        descriptor: Its model descriptor (empty when it stored none).
        features: (n, space.n_features) configuration features.
        scores: (n,) higher-is-better values of the study's first objective.
    """

    study_name: str
    descriptor: dict[str, float]
    features: np.ndarray
    scores: np.ndarray


def read_descriptor(raw: object) -> dict[str, float]:
    """A stored descriptor as ``{name: float}``, dropping non-numeric entries."""
    if not isinstance(raw, Mapping):
        return {}
    out = {}
    for key, value in raw.items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def load_transfer_rows(
    storage: BaseStorage,
    space: SearchSpace,
    exclude_study: str,
    max_rows_per_study: int = 2000,
) -> list[StudyRows]:
    """Rows of every other study in ``storage`` whose trials fit ``space``.

    Args:
        storage: The Optuna storage shared by the studies.
        space: The space being searched; trials of other spaces are skipped.
        exclude_study: Name of the study being searched (not a transfer source).
        max_rows_per_study: Keep at most this many (the first) trials per study, which
            bounds the fit time when a source study was exhaustive.
    """
    from optuna.trial import TrialState

    out = []
    for frozen in storage.get_all_studies():
        if frozen.study_name == exclude_study:
            continue
        sign = float(signs(frozen.directions)[0])
        configs, values = [], []
        trials = storage.get_all_trials(
            frozen._study_id, deepcopy=False, states=(TrialState.COMPLETE,)
        )
        for t in trials:
            config = trial_config(space, t)
            if config is None or not space.contains(config) or not t.values:
                continue
            value = float(t.values[0])
            if np.isfinite(value):
                configs.append(config)
                values.append(sign * value)
            if len(configs) >= max_rows_per_study:
                break
        if len(configs) < 2:  # a single row carries no ranking information
            continue
        out.append(
            StudyRows(
                study_name=frozen.study_name,
                descriptor=read_descriptor(frozen.user_attrs.get(DESCRIPTOR_ATTR)),
                features=space.encode_many(configs),
                scores=np.asarray(values),
            )
        )
    return out


def descriptor_keys(descriptors: Sequence[Mapping[str, float]]) -> list[str]:
    """Sorted union of descriptor names (the descriptor feature columns)."""
    return sorted({k for d in descriptors for k in d})


def descriptor_block(descriptor: Mapping[str, float], keys: Sequence[str], n: int) -> np.ndarray:
    """(n, len(keys)) matrix repeating ``descriptor``; NaN where a name is missing.

    XGBoost treats NaN as "missing" and learns a default branch for it, so studies
    with partial descriptors still mix.
    """
    row = np.array([float(descriptor.get(k, np.nan)) for k in keys], dtype=np.float64)
    return np.repeat(row[None, :], n, axis=0)
