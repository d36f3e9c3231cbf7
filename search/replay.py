"""Replay landscapes: benchmark strategies on a table of measured configurations.

A :class:`Landscape` is a finite map configuration -> metric, measured once (a
published sweep such as Brevitas' PTQ table, or the cached results of an exhaustive
live run). Replaying a strategy on it runs the real search loop with a table lookup as
the objective and counts the evaluations until a configuration within ``max_drop`` of
the landscape's best is found: search efficiency in seconds, without a model.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quantune.errors import UserInputError
from quantune.search.space import Config, SearchSpace, config_key
from quantune.search.target import Target


@dataclass(frozen=True)
class Landscape:
    """A measured landscape.

    Attributes:
        name: Display name (e.g. the model).
        space: The configurations (an explicit candidate list).
        table: config_key -> metric (higher is better).
        descriptor: Model descriptor floats (used by transfer).
    """

    name: str
    space: SearchSpace
    table: dict[str, float]
    descriptor: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_results(
        cls,
        name: str,
        results: Mapping[str, float] | Sequence[tuple[Mapping[str, Any], float]],
        descriptor: Mapping[str, float] | None = None,
        space: SearchSpace | None = None,
    ) -> Landscape:
        """Build from ``[(config, metric), ...]`` or ``{config_key: metric}``.

        Args:
            name: Display name.
            results: The measurements; a dict must be keyed by
                :func:`~quantune.search.space.config_key` (as an exhaustive live run
                caches them).
            descriptor: Model descriptor floats.
            space: The space; by default inferred from the configurations.
        """
        import json

        pairs = (
            [(json.loads(k), float(v)) for k, v in results.items()]
            if isinstance(results, Mapping)
            else [(dict(c), float(v)) for c, v in results]
        )
        if not pairs:
            raise UserInputError(f"landscape {name!r} has no measurements")
        if space is None:
            space = SearchSpace.from_candidates([c for c, _ in pairs])
        table = {config_key(space.validate(c)): v for c, v in pairs}
        return cls(name, space, table, dict(descriptor or {}))

    @property
    def best(self) -> float:
        """The best metric of the landscape."""
        return max(self.table.values())

    def evaluate(self, config: Mapping[str, Any]) -> float:
        """The measured metric of ``config`` (the replayed objective)."""
        return self.table[config_key(config)]

    def n_within(self, max_drop: float) -> int:
        """How many configurations are within ``max_drop`` of the best."""
        target = Target(baseline=self.best, max_drop=max_drop)
        return sum(target.met(v) for v in self.table.values())


@dataclass(frozen=True)
class ReplayRun:
    """One replayed search.

    Attributes:
        evals_to_target: Evaluations until the target was met (None: never within the
            budget).
        best_so_far: Best metric after each evaluation.
        wall_s: Wall time of the search.
    """

    evals_to_target: int | None
    best_so_far: list[float]
    wall_s: float


def replay(
    landscape: Landscape,
    strategy: str,
    seed: int,
    *,
    max_drop: float = 0.1,
    budget: int | None = None,
    sampler_options: Mapping[str, Any] | None = None,
    transfer_from: Sequence[Landscape] = (),
    transfer_rows: int = 60,
) -> ReplayRun:
    """Run ``strategy`` on ``landscape`` until a configuration within ``max_drop`` of
    the best is evaluated (or ``budget`` evaluations, default the landscape's size).

    Args:
        landscape: The landscape to search.
        strategy: A strategy name.
        seed: Seed of the search.
        max_drop: Target distance from the landscape's best, in metric points.
        budget: Evaluation budget.
        sampler_options: Options of the strategy's sampler.
        transfer_from: Other landscapes standing for earlier tuning runs of other models
            in the same storage: ``transfer_rows`` of their configurations, drawn at
            random with ``seed``, are stored as completed studies before the search.
        transfer_rows: Trials per transfer study.
    """
    import optuna

    from quantune.search.runner import run_search

    storage = optuna.storages.InMemoryStorage()
    rng = np.random.default_rng([seed, 0x7472])
    for source in transfer_from:
        _store_source_study(storage, source, rng, transfer_rows)
    curve: list[float] = []

    def objective(config: Config) -> float:
        value = landscape.evaluate(config)
        curve.append(max(value, curve[-1]) if curve else value)
        return value

    started = time.perf_counter()
    result = run_search(
        landscape.space,
        objective,
        strategy=strategy,
        n_trials=budget or landscape.space.size,
        storage=storage,
        study_name=f"replay-{landscape.name}",
        seed=seed,
        target=Target(baseline=landscape.best, max_drop=max_drop),
        model_descriptor=landscape.descriptor or None,
        sampler_options=sampler_options,
        max_repeats=10 * landscape.space.size,
    )
    wall = time.perf_counter() - started
    reached = result.stop_reason == "target"
    return ReplayRun(result.n_evaluations if reached else None, curve, wall)


def _store_source_study(
    storage: Any, source: Landscape, rng: np.random.Generator, n_rows: int
) -> None:
    import optuna

    from quantune.search.optuna_bridge import CONFIG_ATTR, DESCRIPTOR_ATTR, KEY_ATTR, to_params
    from quantune.search.optuna_bridge import distributions as dists

    study = optuna.create_study(storage=storage, study_name=f"source-{source.name}",
                                direction="maximize")
    study.set_user_attr(DESCRIPTOR_ATTR, source.descriptor)
    configs = list(source.space.enumerate())
    picks = rng.choice(len(configs), size=min(n_rows, len(configs)), replace=False)
    for i in picks:
        config = configs[int(i)]
        study.add_trial(
            optuna.trial.create_trial(
                params=to_params(source.space, config),
                distributions=dists(source.space),
                value=source.evaluate(config),
                user_attrs={CONFIG_ATTR: config, KEY_ATTR: config_key(config)},
            )
        )


def summarize(runs: Sequence[ReplayRun], budget: int) -> dict[str, float]:
    """Median and 90th percentile of evaluations to target, median wall time.

    A run that never reached the target counts as ``budget + 1`` evaluations, so the
    statistics stay defined (and pessimistic for that strategy).
    """
    evals = np.array([r.evals_to_target or budget + 1 for r in runs], dtype=np.float64)
    return {
        "evals_to_target_median": float(np.median(evals)),
        "evals_to_target_p90": float(np.percentile(evals, 90)),
        "wall_s_median": float(np.median([r.wall_s for r in runs])),
        "reached": int(sum(r.evals_to_target is not None for r in runs)),
    }
