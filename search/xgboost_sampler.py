"""The XGBoost cost-model sampler (the ``xgboost`` strategy).

Each proposal:

1. *Warm-up*: until ``n_startup`` trials have completed, propose at random (without
   replacement) among the configurations the declared monotone priors rank most
   precise (single-objective studies; uniformly at random otherwise). With transfer
   data from other studies the model is usable at once, so the warm-up shrinks to
   ``n_startup_transfer`` (0 by default: XGB-T).
2. *Fit*: an XGBoost model (``rank:pairwise`` or ``reg:squarederror``) on the completed
   trials' configuration features (+ model descriptor features when transfer rows are
   present). Failed and pruned trials are rows with a score below the worst completed
   one: the model learns to avoid configurations that crash or look hopeless.
3. *Score*: every unvisited configuration when the space has at most
   :data:`ENUMERATE_LIMIT` of them; otherwise a random sample plus the neighbours and
   random mutations of the best configurations so far.
4. *Pick*: the best predicted one (ties at random); with probability ``epsilon`` a
   random unvisited configuration instead, so a wrong model cannot trap the search.

Configurations already evaluated or being evaluated by any trial of the study, other
workers' RUNNING trials included, are never proposed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from optuna.trial import TrialState

from quantune.search.candidate_sampler import ENUMERATE_LIMIT, CandidateSampler, ProposalContext
from quantune.search.cost_model import (
    ACQUISITIONS,
    Acquisition,
    CostEnsemble,
    CostObjective,
    TrainingSet,
    acquire,
    check_objective,
)
from quantune.search.neighbourhood import mutate, neighbours
from quantune.search.optuna_bridge import DESCRIPTOR_ATTR, is_stale, trial_config
from quantune.search.scoring import scalar_scores
from quantune.search.space import Config, SearchSpace, config_key
from quantune.search.transfer import (
    StudyRows,
    descriptor_block,
    descriptor_keys,
    load_transfer_rows,
    read_descriptor,
)

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial

WARMUPS = ("prior", "covering", "random")
"""Warm-up designs (see :class:`XGBoostSampler`)."""
BITS_NAME = re.compile(r"(^|[^a-z])bits?([^a-z]|$)", re.IGNORECASE)
"""Dimension names taken for bit widths by ``monotone="auto"`` (``w_bits``, ``Act bit width``)."""


class XGBoostSampler(CandidateSampler):
    """Optuna sampler that proposes the configuration an XGBoost cost model ranks best.

    Args:
        space: The search space.
        seed: Seed of every random choice and of the booster.
        n_startup: Random trials before the first model fit (default 4).
        objective: Cost model objective, ``"rank"`` (pairwise) or ``"regression"``.
        epsilon: Probability of proposing a random unvisited configuration instead.
        model_descriptor: Floats describing the model (layer counts, depthwise share,
            parameters, MACs...). Defaults to the study's stored descriptor.
        transfer: Warm-start from completed trials of other studies in the storage.
        transfer_weight: Weight of each transfer study relative to the own study (1.0).
        n_startup_transfer: Random trials before the first fit when transfer rows exist.
        threshold: Target on objective 0 for multi-objective studies (see
            :func:`quantune.search.scoring.scalar_scores`).
        n_samples: Random candidates scored per proposal in spaces too large to list.
        n_parents: Best configurations whose neighbourhoods are scored in large spaces.
        n_rounds: Boosting rounds per fit.
        xgb_params: Extra xgboost parameters (override the data-dependent depth and
            monotone constraints too).
        warmup: ``"prior"`` (single-objective studies with monotone priors: the
            unvisited configurations the priors rank most precise, see
            :meth:`CandidateSampler.preferred_unvisited`; otherwise random),
            ``"covering"`` (each warm-up point covers the dimension values seen least so
            far, see :meth:`CandidateSampler.covering_unvisited`) or ``"random"``.
            Brevitas replays, 20 seeds, median evaluations on mobilenet_v2 / resnet18 /
            vit_b_32 with the declared priors (backend included): random 11.5 / 7.5 /
            7.5, prior 8.5 / 3.0 / 2.5. On a landscape whose best scores are noise above
            the float model (the bundled example) the priors steer away from them.
        n_models: Cost models in the bootstrap ensemble (see
            :class:`~quantune.search.cost_model.CostEnsemble`).
        acquisition: ``"greedy"``, ``"ucb"`` or ``"thompson"`` (see
            :func:`~quantune.search.cost_model.acquire`).
        kappa: Weight of the ensemble's spread in ``"ucb"``.
        monotone: Dimension name -> +1/-1: the score may only rise/fall with that
            ordinal dimension. ``"auto"`` (single-objective studies only): each
            dimension's declared prior (:attr:`Dimension.monotone`), and +1 for the
            undeclared numeric ordinal dimensions named like bit widths (``w_bits``,
            ``Weight bit width``...): more bits do not lower accuracy. Priors spare the
            model from learning directions from scarce rows (Brevitas replays, 20 seeds,
            median evaluations on mobilenet_v2 / resnet18 / vit_b_32: none 14.5 / 10.5 /
            10.0; bit widths 13.0 / 9.5 / 10.0; bit widths + declared scale type, bias
            width and per-channel 12.0 / 7.0 / 7.5). None: no constraint.
        deep_after: Rows from which trees may be 4 deep instead of stumps.
        depths: Tree depths of an ensemble of models fitted on the same rows, whose
            standardised predictions are combined by ``acquisition`` (replaces the
            depth schedule of ``deep_after``; None uses that schedule): averaging an
            additive model with deeper ones hedges between main effects, which few
            rows estimate well, and the interactions some landscapes need (on the
            Brevitas replays, median evaluations to target: stumps alone help
            resnet18/vit_b_32 but cost mobilenet_v2; the mix of 1, 2, 4 helps the
            first two and keeps the third).
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int | None = None,
        n_startup: int = 4,
        objective: CostObjective = "rank",
        epsilon: float = 0.05,
        model_descriptor: Mapping[str, float] | None = None,
        transfer: bool = True,
        transfer_weight: float = 0.3,
        n_startup_transfer: int = 0,
        threshold: float | None = None,
        n_samples: int = 2048,
        n_parents: int = 8,
        n_rounds: int = 60,
        xgb_params: Mapping[str, Any] | None = None,
        warmup: Literal["prior", "covering", "random"] = "prior",
        n_models: int = 1,
        acquisition: Acquisition = "greedy",
        kappa: float = 1.0,
        monotone: Mapping[str, int] | Literal["auto"] | None = "auto",
        deep_after: int = 24,
        depths: Sequence[int] | None = (1, 2, 4),
    ) -> None:
        super().__init__(space, seed)
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        check_objective(objective)
        if n_startup < 0 or n_startup_transfer < 0:
            raise ValueError("n_startup and n_startup_transfer must be >= 0")
        self.n_startup = n_startup
        self.objective: CostObjective = objective
        self.epsilon = epsilon
        self.model_descriptor = None if model_descriptor is None else dict(model_descriptor)
        self.transfer = transfer
        self.transfer_weight = transfer_weight
        self.n_startup_transfer = n_startup_transfer
        self.threshold = threshold
        self.n_samples = n_samples
        self.n_parents = n_parents
        self.n_rounds = n_rounds
        self.xgb_params = dict(xgb_params or {})
        if warmup not in WARMUPS:
            raise ValueError(f"warmup must be one of {WARMUPS}, got {warmup!r}")
        if acquisition not in ACQUISITIONS:
            raise ValueError(f"acquisition must be one of {ACQUISITIONS}, got {acquisition!r}")
        if n_models < 1:
            raise ValueError(f"n_models must be >= 1, got {n_models}")
        self.warmup = warmup
        self.n_models = n_models
        self.acquisition: Acquisition = acquisition
        self.kappa = kappa
        self.monotone = monotone
        self.deep_after = deep_after
        self.depths = tuple(depths) if depths else None
        self._transfer_rows: list[StudyRows] | None = None
        self._all_features: np.ndarray | None = None

    # ----------------------------------------------------------------- proposal
    def propose(self, ctx: ProposalContext) -> Config | None:
        study, trials, visited, rng = ctx.study, ctx.trials, ctx.visited, ctx.rng
        done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
        done_configs = [trial_config(self.space, t) for t in done]
        own = [(t, c) for t, c in zip(done, done_configs, strict=True) if c is not None]
        transfer = self._load_transfer(study)
        startup = self.n_startup_transfer if transfer else self.n_startup
        # rng.random() is drawn every time so the stream does not depend on the branch.
        explore = rng.random() < self.epsilon
        if len(own) < max(startup, 1 if not transfer else 0):
            if self.warmup == "prior":
                signs = self._monotone(len(study.directions))
                return self.preferred_unvisited(visited, signs, rng, self.n_samples)
            if self.warmup == "random":
                return self.random_unvisited(visited, rng)
            seen = [c for t in trials for c in [trial_config(self.space, t)] if c is not None]
            return self.covering_unvisited(visited, seen, rng, self.n_samples)
        if explore:
            return self.random_unvisited(visited, rng)
        bad = [
            c
            for t in trials
            if t.state in (TrialState.FAIL, TrialState.PRUNED) and not is_stale(t)
            for c in [trial_config(self.space, t)]
            if c is not None
        ]
        descriptor = self._descriptor(study)
        keys = descriptor_keys([descriptor, *(r.descriptor for r in transfer)]) if transfer else []
        data = self._training_set(study, own, bad, transfer, descriptor, keys)
        params = {**self._tree_params(len(data), len(study.directions), len(keys)),
                  **self.xgb_params}
        # A max_depth in xgb_params fixes the depth of every member.
        fixed = "max_depth" in self.xgb_params
        member_params = [] if fixed else [{"max_depth": d} for d in self.depths or ()]
        if member_params:
            params.pop("max_depth")
        ensemble = CostEnsemble(max(self.n_models, len(member_params)), self.objective,
                                seed=self.seed, n_rounds=self.n_rounds, params=params,
                                member_params=member_params).fit(data)
        parents = [own[int(i)][1] for i in np.argsort(-data.scores[: len(own)], kind="stable")]
        candidates, features = self._candidates(parents, visited, rng)
        if not candidates:
            return None
        if keys:
            features = np.hstack([features, descriptor_block(descriptor, keys, len(candidates))])
        score = acquire(ensemble.predict_all(features), self.acquisition, self.kappa, rng)
        top = np.flatnonzero(score >= score.max() - 1e-9)
        return candidates[int(rng.choice(top))]

    def _tree_params(self, n_rows: int, n_objectives: int, n_extra: int) -> dict[str, Any]:
        """Booster parameters that depend on the data: depth and monotone constraints.

        Depth: with few rows, stumps (depth 1, an additive model: one effect per
        dimension) generalise far better than deep trees, which memorise the handful of
        rows and rank the untried configurations almost arbitrarily; interactions are
        allowed once there are enough rows to estimate them (``deep_after``).
        """
        depth = 1 if n_rows < self.deep_after else 4
        params: dict[str, Any] = {"max_depth": depth}
        monotone = self._monotone(n_objectives)
        if monotone:
            signs = [monotone.get(d.name, 0) if d.kind == "ordinal" else 0
                     for d in self.space.dimensions for _ in range(d.width)]
            if any(signs):
                signs += [0] * n_extra
                params["monotone_constraints"] = "(" + ",".join(str(int(v)) for v in signs) + ")"
        return params

    def _monotone(self, n_objectives: int) -> dict[str, int]:
        if self.monotone != "auto":
            return dict(self.monotone or {})
        if n_objectives > 1:
            # Metric vs size/latency: more bits is better for one and worse for the other.
            return {}
        declared = {d.name: d.monotone for d in self.space.dimensions if d.monotone}
        guessed = {d.name: 1 for d in self.space.dimensions if d.kind == "ordinal" and d.numeric
                   and BITS_NAME.search(d.name)}
        return {**guessed, **declared}

    # ----------------------------------------------------------------- training data
    def _training_set(
        self,
        study: Study,
        own: Sequence[tuple[FrozenTrial, Config]],
        bad: Sequence[Config],
        transfer: Sequence[StudyRows],
        descriptor: Mapping[str, float],
        keys: Sequence[str],
    ) -> TrainingSet:
        values = [list(t.values) for t, _ in own]
        scores = scalar_scores(values, [d.name for d in study.directions], self.threshold)
        configs = [c for _, c in own]
        if bad:
            # Failed/pruned configurations rank below every completed one.
            floor = float(scores.min()) if scores.size else 0.0
            spread = float(np.ptp(scores)) if scores.size > 1 else 1.0
            scores = np.concatenate([scores, np.full(len(bad), floor - 0.1 * spread - 1e-6)])
            configs = [*configs, *bad]
        features = [self.space.encode_many(configs)]
        if keys:
            features[0] = np.hstack([features[0], descriptor_block(descriptor, keys, len(configs))])
        all_scores = [scores]
        groups = [np.zeros(len(configs), dtype=np.int64)]
        weights = {0: 1.0}
        for gid, rows in enumerate(transfer, start=1):
            block = descriptor_block(rows.descriptor, keys, len(rows.scores))
            features.append(np.hstack([rows.features, block]))
            all_scores.append(rows.scores)
            groups.append(np.full(len(rows.scores), gid, dtype=np.int64))
            weights[gid] = self.transfer_weight
        return TrainingSet(
            features=np.vstack(features),
            scores=np.concatenate(all_scores),
            groups=np.concatenate(groups),
            group_weights=weights,
        )

    def _descriptor(self, study: Study) -> dict[str, float]:
        if self.model_descriptor is not None:
            return self.model_descriptor
        return read_descriptor(study.user_attrs.get(DESCRIPTOR_ATTR))

    def _load_transfer(self, study: Study) -> list[StudyRows]:
        if not self.transfer:
            return []
        if self._transfer_rows is None:
            # Read once per sampler: source studies are finished runs of other models.
            storage = study._storage  # noqa: SLF001 - Optuna exposes no public accessor
            self._transfer_rows = load_transfer_rows(storage, self.space, study.study_name)
        return self._transfer_rows

    # ----------------------------------------------------------------- candidates
    def _candidates(
        self,
        parents: Sequence[Config],
        visited: set[str],
        rng: np.random.Generator,
    ) -> tuple[list[Config], np.ndarray]:
        """Unvisited configurations to score, with their features.

        Args:
            parents: Completed configurations, best first (seeds of local search).
            visited: Keys not to return.
            rng: Random generator of this proposal.
        """
        if self.space.size <= ENUMERATE_LIMIT:
            keyed = self.keyed_configs()
            if self._all_features is None:
                self._all_features = self.space.encode_many([c for _, c in keyed])
            free = [i for i, (k, _) in enumerate(keyed) if k not in visited]
            return [keyed[i][1] for i in free], self._all_features[free]
        pool: dict[str, Config] = {}
        for parent in parents[: self.n_parents]:
            for c in neighbours(self.space, parent):
                pool.setdefault(config_key(c), c)
            for _ in range(16):
                c = mutate(self.space, parent, rng, n_changes=int(rng.integers(1, 4)))
                pool.setdefault(config_key(c), c)
        for c in self.space.sample(rng, self.n_samples):
            pool.setdefault(config_key(c), c)
        free_configs = [c for k, c in pool.items() if k not in visited]
        return free_configs, self.space.encode_many(free_configs)
