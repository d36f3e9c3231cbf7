"""Base of quantune's own Optuna samplers, plus the ``random`` and ``grid`` strategies.

A :class:`CandidateSampler` proposes a whole configuration at once through Optuna's
relative-sampling hooks (``infer_relative_search_space`` returns every dimension,
``sample_relative`` returns all their values), and never proposes a configuration that
any trial of the study has evaluated or is evaluating (RUNNING trials of other workers
sharing the storage included).

Determinism: the random stream of trial ``n`` is derived from ``(seed, n)``, not from
a stateful generator, so a resumed or re-run study proposes the same configurations.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import TrialState

from quantune.search.optuna_bridge import distributions, to_params, visited_keys
from quantune.search.space import Config, SearchSpace, config_key

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import FrozenTrial

ENUMERATE_LIMIT = 20_000
"""Spaces up to this size are enumerated; larger ones are sampled."""

_ALL_STATES = (
    TrialState.COMPLETE,
    TrialState.RUNNING,
    TrialState.WAITING,
    TrialState.FAIL,
    TrialState.PRUNED,
)


@dataclass(frozen=True)
class ProposalContext:
    """What a proposal may look at.

    Attributes:
        study: The study (its storage also holds other studies, for transfer).
        trials: The study's other trials, any state.
        visited: Keys of configurations not to propose.
        rng: This trial's random generator.
    """

    study: Study
    trials: list[FrozenTrial]
    visited: set[str]
    rng: np.random.Generator


class CandidateSampler(BaseSampler, abc.ABC):
    """Proposes unvisited configurations of ``space`` jointly.

    Args:
        space: The search space.
        seed: Seed of every random choice.
    """

    def __init__(self, space: SearchSpace, seed: int | None = None) -> None:
        self.space = space
        self.seed = 0 if seed is None else int(seed)
        self._fallback = RandomSampler(seed=seed)
        self._distributions = distributions(space)
        self._keyed: list[tuple[str, Config]] | None = None

    # ----------------------------------------------------------------- Optuna hooks
    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return dict(self._distributions)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        trials = study.get_trials(deepcopy=False, states=_ALL_STATES)
        others = [t for t in trials if t.number != trial.number]
        visited = visited_keys(self.space, others)
        rng = self.rng_for(trial.number)
        config = self.propose(ProposalContext(study, others, visited, rng))
        if config is None:  # space exhausted: the runner stops before this matters
            return {}
        return to_params(self.space, config)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        # Only reached for parameters outside the space (a user's extra suggest call).
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    # ----------------------------------------------------------------- helpers
    def rng_for(self, trial_number: int) -> np.random.Generator:
        """The random generator of trial ``trial_number`` (a pure function of seed, n)."""
        return np.random.default_rng([self.seed, trial_number])

    def keyed_configs(self) -> list[tuple[str, Config]]:
        """Every configuration with its key, in enumeration order (built once).

        Raises:
            ValueError: the space is larger than :data:`ENUMERATE_LIMIT`.
        """
        if self.space.size > ENUMERATE_LIMIT:
            raise ValueError(f"space of {self.space.size} configurations is too large to list")
        if self._keyed is None:
            self._keyed = [(config_key(c), c) for c in self.space.enumerate()]
        return self._keyed

    def random_unvisited(
        self, visited: set[str], rng: np.random.Generator, tries: int = 2000
    ) -> Config | None:
        """A uniformly random configuration not in ``visited``; None when exhausted."""
        if self.space.size <= ENUMERATE_LIMIT:
            free = [c for k, c in self.keyed_configs() if k not in visited]
            return free[int(rng.integers(len(free)))] if free else None
        for config in self.space.sample(rng, tries):
            if config_key(config) not in visited:
                return config
        return None

    def unvisited_pool(
        self, visited: set[str], rng: np.random.Generator, n_samples: int
    ) -> list[Config]:
        """Every unvisited configuration, or ``n_samples`` random ones in spaces too
        large to list (the candidates a warm-up design scores)."""
        if self.space.size <= ENUMERATE_LIMIT:
            return [c for k, c in self.keyed_configs() if k not in visited]
        return [c for c in self.space.sample(rng, n_samples) if config_key(c) not in visited]

    def covering_unvisited(
        self,
        visited: set[str],
        seen: Sequence[Config],
        rng: np.random.Generator,
        n_samples: int = 2048,
    ) -> Config | None:
        """An unvisited configuration that best covers values ``seen`` lacks.

        A sequential space-filling design for the warm-up of a model-based sampler:
        each candidate scores ``sum over dimensions of 1 / (1 + times its value was
        seen)``, and the best is taken (ties at random). The first few points thus
        show every value of every dimension about equally often, so the first model
        fit can estimate each dimension's effect, which a uniform random warm-up of
        the same size often cannot (two random points share a value of a binary
        dimension half the time). Spaces too large to list are scored on
        ``n_samples`` random configurations.

        Args:
            visited: Keys not to return.
            seen: Configurations already evaluated or running.
            rng: Random generator of this proposal.
            n_samples: Candidates scored in spaces too large to list.
        """
        free = self.unvisited_pool(visited, rng, n_samples)
        if not free:
            return self.random_unvisited(visited, rng)
        counts = [np.zeros(len(d)) for d in self.space.dimensions]
        for config in seen:
            for j, i in enumerate(self.space.indices(config)):
                counts[j][i] += 1
        idx = np.array([self.space.indices(c) for c in free], dtype=np.int64)
        score = sum(1.0 / (1.0 + counts[j][idx[:, j]]) for j in range(idx.shape[1]))
        top = np.flatnonzero(score >= np.max(score) - 1e-12)
        return free[int(rng.choice(top))]

    def preferred_unvisited(
        self,
        visited: set[str],
        signs: Mapping[str, int],
        rng: np.random.Generator,
        n_samples: int = 2048,
    ) -> Config | None:
        """An unvisited configuration that declared priors rank most precise.

        A warm-up for single-objective searches: ``signs`` maps ordinal dimensions to
        +1 (the metric does not fall along their order) or -1. Under such priors every
        configuration is dominated by the one with each of those dimensions moved to its
        preferred end, so the warm-up draws (uniformly, ties at random) from the
        unvisited configurations nearest that end: each dimension contributes its
        value's position between its least (0) and most (1) preferred value. The other
        dimensions, whose effect no prior states, are what the first points then teach
        the cost model. Peer tools start the same way (Intel Neural Compressor's basic
        strategy tries its default int8 configuration first). Without usable priors it
        is a uniform random draw. Spaces too large to list are scored on
        ``n_samples`` random configurations.
        """
        columns = [
            (j, d.encode_indices(np.arange(len(d)))[:, 0] * signs[d.name])
            for j, d in enumerate(self.space.dimensions)
            if signs.get(d.name) and d.kind == "ordinal" and len(d) > 1
        ]
        if not columns:
            return self.random_unvisited(visited, rng)
        free = self.unvisited_pool(visited, rng, n_samples)
        if not free:
            return self.random_unvisited(visited, rng)
        idx = np.array([self.space.indices(c) for c in free], dtype=np.int64)
        score = np.zeros(len(free))
        for j, values in columns:
            score += (values[idx[:, j]] - values.min()) / (values.max() - values.min())
        top = np.flatnonzero(score >= np.max(score) - 1e-9)
        return free[int(rng.choice(top))]

    @abc.abstractmethod
    def propose(self, ctx: ProposalContext) -> Config | None:
        """The next configuration, or None when every configuration was visited."""


class UniqueRandomSampler(CandidateSampler):
    """Uniform random search without replacement (``random``)."""

    def propose(self, ctx: ProposalContext) -> Config | None:
        return self.random_unvisited(ctx.visited, ctx.rng)


class ShuffledGridSampler(CandidateSampler):
    """Exhaustive search in a seed-shuffled order (``grid``).

    Like Optuna's ``GridSampler``, the grid order is a seeded permutation so that
    several workers and several seeds cover the grid differently; unlike it, the grid
    is the space itself, which may be an explicit candidate list. Spaces larger than
    :data:`ENUMERATE_LIMIT` are walked in lexicographic order instead of shuffled.
    """

    def __init__(self, space: SearchSpace, seed: int | None = None) -> None:
        super().__init__(space, seed)
        self._order: list[tuple[str, Config]] | None = None

    def propose(self, ctx: ProposalContext) -> Config | None:
        visited = ctx.visited
        if self.space.size > ENUMERATE_LIMIT:
            return next((c for c in self.space.enumerate() if config_key(c) not in visited), None)
        if self._order is None:
            grid = self.keyed_configs()
            perm = np.random.default_rng([self.seed, 0x6772]).permutation(len(grid))
            self._order = [grid[int(i)] for i in perm]
        return next((c for k, c in self._order if k not in visited), None)

