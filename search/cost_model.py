"""The XGBoost cost model: predicts how good an untried configuration will be.

Two learning objectives, as in AutoTVM and the Quantune paper:

* ``"rank"`` (``rank:pairwise``): learns only the order of configurations within a
  group (one group per study). Robust to the scale of the metric, and lets trials of
  other models (transfer) teach *which configurations beat which* without their
  absolute accuracies being comparable.
* ``"regression"`` (``reg:squarederror``): fits the scores themselves. To mix studies
  the scores are replaced by their within-study ranks scaled to [0, 1].

Both work on the tens of rows a PTQ search has, so the trees are shallow and the
minimum child weight is tiny (the default of 1 would forbid most splits on 5 rows).
xgboost is imported lazily: importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

CostObjective = Literal["rank", "regression"]

_XGB_OBJECTIVES = {"rank": "rank:pairwise", "regression": "reg:squarederror"}


def check_objective(objective: str) -> None:
    """Raise ValueError unless ``objective`` is ``"rank"`` or ``"regression"``."""
    if objective not in _XGB_OBJECTIVES:
        raise ValueError(f"cost model objective must be 'rank' or 'regression', got {objective!r}")


@dataclass
class TrainingSet:
    """Rows for the cost model.

    Attributes:
        features: (n, f) float matrix; NaN marks a missing descriptor feature.
        scores: (n,) higher-is-better labels.
        groups: (n,) integer study id per row; group 0 is the study being searched.
        group_weights: weight of each group id (own study 1.0, transfer studies less).
    """

    features: np.ndarray
    scores: np.ndarray
    groups: np.ndarray
    group_weights: dict[int, float] = field(default_factory=lambda: {0: 1.0})

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def _within_group_ranks(scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
    out = np.zeros_like(scores, dtype=np.float64)
    for g in np.unique(groups):
        mask = groups == g
        x = scores[mask]
        if x.size == 1:
            out[mask] = 0.5
            continue
        # Average rank of ties, scaled to [0, 1].
        sorted_x = np.sort(x)
        lo = np.searchsorted(sorted_x, x, side="left")
        hi = np.searchsorted(sorted_x, x, side="right") - 1
        out[mask] = (lo + hi) / 2.0 / (x.size - 1)
    return out


class CostModel:
    """A gradient-boosted tree model over configuration (+ descriptor) features.

    Args:
        objective: ``"rank"`` or ``"regression"``.
        seed: Seed of the booster (fits are deterministic for a given seed).
        n_rounds: Boosting rounds.
        params: Extra xgboost parameters overriding the defaults below.
    """

    def __init__(
        self,
        objective: CostObjective = "rank",
        seed: int = 0,
        n_rounds: int = 60,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        check_objective(objective)
        self.objective: CostObjective = objective
        self.n_rounds = n_rounds
        self.params: dict[str, Any] = {
            "objective": _XGB_OBJECTIVES[objective],
            "eta": 0.3,
            "max_depth": 4,
            # Tiny data: allow splits on a handful of rows (pairwise hessians are small).
            "min_child_weight": 1e-3,
            "lambda": 1.0,
            "tree_method": "exact",
            # One thread: fits take milliseconds, and workers often share a machine.
            "nthread": 1,
            "seed": int(seed),
            "verbosity": 0,
        }
        if params:
            self.params.update(params)
        self._booster: Any = None

    def fit(self, data: TrainingSet) -> CostModel:
        """Fit on ``data`` (rows of group 0 and any transfer groups)."""
        import xgboost as xgb

        order = np.argsort(data.groups, kind="stable")  # ranking needs rows grouped
        features = data.features[order]
        groups = data.groups[order]
        scores = data.scores[order].astype(np.float64)
        ids, counts = np.unique(groups, return_counts=True)
        weights = np.array([data.group_weights.get(int(g), 1.0) for g in ids])
        if self.objective == "rank":
            dmat = xgb.DMatrix(features, label=scores, missing=np.nan, nthread=1)
            dmat.set_group(counts)
            dmat.set_weight(weights)  # ranking weights are per group
        else:
            labels = _within_group_ranks(scores, groups) if ids.size > 1 else scores
            row_w = weights[np.searchsorted(ids, groups)]
            dmat = xgb.DMatrix(features, label=labels, weight=row_w, missing=np.nan, nthread=1)
        self._booster = xgb.train(self.params, dmat, num_boost_round=self.n_rounds)
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predicted scores (higher is better; comparable only among themselves)."""
        import xgboost as xgb

        if self._booster is None:
            raise RuntimeError("CostModel.predict called before fit")
        # nthread=1: on a loaded machine an OpenMP pool costs ~50 ms per DMatrix, 30x the
        # conversion itself for the few hundred rows of a PTQ search.
        return np.asarray(
            self._booster.predict(xgb.DMatrix(features, missing=np.nan, nthread=1))
        )


class CostEnsemble:
    """Several cost models on bootstrap resamples of the rows: a mean and a spread.

    With the tens of rows of a PTQ search a single boosted model is confidently wrong
    about most of the space. Refitting it on bootstrap resamples (rows drawn with
    replacement within each study, so every study keeps its group) gives members that
    agree where the data pins the answer and disagree where it does not; the spread of
    their predictions is the uncertainty an upper-confidence-bound or Thompson-style
    acquisition needs. Member 0 is fitted on the rows as they are, so an ensemble of
    one is the plain :class:`CostModel`.

    Args:
        n_models: Members (>= 1).
        objective: ``"rank"`` or ``"regression"``.
        seed: Seeds the resampling and every member's booster.
        n_rounds: Boosting rounds per member.
        params: Extra xgboost parameters of every member.
        member_params: Per-member parameter overrides, cycled: member ``k`` uses
            ``member_params[k % len(member_params)]``. The first ``len(member_params)``
            members are fitted on the rows as they are (they differ by their
            parameters, e.g. tree depth: an average over model complexities), the
            others on bootstrap resamples.
    """

    def __init__(
        self,
        n_models: int = 1,
        objective: CostObjective = "rank",
        seed: int = 0,
        n_rounds: int = 60,
        params: Mapping[str, Any] | None = None,
        member_params: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        if n_models < 1:
            raise ValueError(f"a cost ensemble needs at least one model, got {n_models}")
        check_objective(objective)
        self.n_models = n_models
        self.objective: CostObjective = objective
        self.seed = int(seed)
        self.n_rounds = n_rounds
        self.params = dict(params or {})
        self.member_params = [dict(p) for p in member_params]
        self.members: list[CostModel] = []

    def fit(self, data: TrainingSet) -> CostEnsemble:
        """Fit every member (see the class docstring for which rows each sees)."""
        rng = np.random.default_rng([self.seed, len(data), 0x656E73])
        n_plain = max(len(self.member_params), 1)
        self.members = []
        for k in range(self.n_models):
            rows = data if k < n_plain else _bootstrap(data, rng)
            extra = self.member_params[k % len(self.member_params)] if self.member_params else {}
            model = CostModel(self.objective, seed=self.seed + k, n_rounds=self.n_rounds,
                              params={**self.params, **extra})
            self.members.append(model.fit(rows))
        return self

    def predict_all(self, features: np.ndarray) -> np.ndarray:
        """(n_models, n) predictions, each member's standardised over the n rows.

        Pairwise-rank margins have no fixed scale, so members are made comparable by
        standardising each over the candidates before they are averaged or spread.
        """
        if not self.members:
            raise RuntimeError("CostEnsemble.predict_all called before fit")
        out = np.vstack([m.predict(features) for m in self.members]).astype(np.float64)
        spread = out.std(axis=1, keepdims=True)
        return (out - out.mean(axis=1, keepdims=True)) / np.where(spread > 0, spread, 1.0)


def _bootstrap(data: TrainingSet, rng: np.random.Generator) -> TrainingSet:
    """Rows drawn with replacement within each group (the group sizes are kept)."""
    picks = []
    for g in np.unique(data.groups):
        idx = np.flatnonzero(data.groups == g)
        picks.append(rng.choice(idx, size=idx.size, replace=True))
    take = np.concatenate(picks)
    return TrainingSet(data.features[take], data.scores[take], data.groups[take],
                       dict(data.group_weights))


Acquisition = Literal["greedy", "ucb", "thompson"]
ACQUISITIONS: tuple[str, ...] = ("greedy", "ucb", "thompson")


def acquire(
    predictions: np.ndarray, acquisition: Acquisition, kappa: float, rng: np.random.Generator
) -> np.ndarray:
    """One score per candidate from an ensemble's (n_models, n) standardised predictions.

    * ``greedy``: the members' mean.
    * ``ucb``: mean + ``kappa`` x the members' standard deviation (optimism where the
      members disagree: a configuration whose effect the data does not pin down yet is
      worth measuring).
    * ``thompson``: one member's prediction, the member drawn with ``rng`` (bootstrap
      Thompson sampling: each proposal acts on one plausible model).
    """
    if acquisition == "thompson":
        return predictions[int(rng.integers(predictions.shape[0]))]
    mean = predictions.mean(axis=0)
    if acquisition == "ucb" and predictions.shape[0] > 1:
        return mean + kappa * predictions.std(axis=0)
    return mean
