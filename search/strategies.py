"""Search strategies by name: every one is an Optuna sampler driven by the same runner.

========  ==================================================================
name      sampler
========  ==================================================================
xgboost   :class:`~quantune.search.xgboost_sampler.XGBoostSampler` (cost model)
random    :class:`~quantune.search.candidate_sampler.UniqueRandomSampler`
grid      :class:`~quantune.search.candidate_sampler.ShuffledGridSampler`
genetic   Optuna ``NSGAIISampler`` (NSGA-II; handles one or several objectives)
tpe       Optuna ``TPESampler`` (multivariate)
========  ==================================================================

``random`` and ``grid`` are quantune's own so that they draw without replacement and
respect explicit candidate lists; ``genetic`` and ``tpe`` are Optuna's and see the
product of the dimensions: the runner repairs their proposals onto the candidate list
(nearest candidate) and answers repeated configurations from the study without
evaluating them again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from quantune.errors import UserInputError
from quantune.search.space import SearchSpace

if TYPE_CHECKING:
    from optuna.samplers import BaseSampler

SamplerFactory = Callable[..., "BaseSampler"]


def _xgboost(space: SearchSpace, seed: int | None, **options: Any) -> BaseSampler:
    from quantune.search.xgboost_sampler import XGBoostSampler

    return XGBoostSampler(space, seed=seed, **options)


def _random(space: SearchSpace, seed: int | None, **options: Any) -> BaseSampler:
    from quantune.search.candidate_sampler import UniqueRandomSampler

    return UniqueRandomSampler(space, seed=seed, **options)


def _grid(space: SearchSpace, seed: int | None, **options: Any) -> BaseSampler:
    from quantune.search.candidate_sampler import ShuffledGridSampler

    return ShuffledGridSampler(space, seed=seed, **options)


def _genetic(space: SearchSpace, seed: int | None, **options: Any) -> BaseSampler:
    from optuna.samplers import NSGAIISampler

    # Optuna's default population (50) is a tenth of a 500-point PTQ space; 16 lets
    # the genetic search start selecting after a budget comparable to the others'.
    options.setdefault("population_size", 16)
    return NSGAIISampler(seed=seed, **options)


def _tpe(space: SearchSpace, seed: int | None, **options: Any) -> BaseSampler:
    from optuna.samplers import TPESampler

    # Multivariate TPE models the joint distribution, which suits a PTQ space whose
    # options interact (e.g. GPTQ act-order exists only with GPTQ).
    options.setdefault("multivariate", True)
    return TPESampler(seed=seed, **options)


_REGISTRY: dict[str, SamplerFactory] = {
    "xgboost": _xgboost,
    "random": _random,
    "grid": _grid,
    "genetic": _genetic,
    "tpe": _tpe,
}


def strategy_names() -> list[str]:
    """Names accepted by :func:`make_sampler`."""
    return list(_REGISTRY)


def register_strategy(name: str, factory: SamplerFactory) -> None:
    """Add (or replace) a strategy: ``factory(space, seed, **options) -> BaseSampler``."""
    if not name:
        raise UserInputError("a strategy needs a non-empty name")
    _REGISTRY[name] = factory


def make_sampler(
    name: str,
    space: SearchSpace,
    seed: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> BaseSampler:
    """The Optuna sampler of strategy ``name`` over ``space``.

    Args:
        name: One of :func:`strategy_names`.
        space: The search space.
        seed: Seed (same seed, same proposals).
        options: Keyword arguments of the sampler (e.g. ``{"objective": "regression"}``
            for ``xgboost``, ``{"population_size": 30}`` for ``genetic``).

    Raises:
        UserInputError: unknown strategy name.
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise UserInputError(
            f"unknown search strategy {name!r}; choose one of {', '.join(_REGISTRY)}"
        ) from None
    return factory(space, seed, **dict(options or {}))
