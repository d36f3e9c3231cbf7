"""Prior-guided warm-up: the first trials go where the declared priors say the best lies."""

from __future__ import annotations

import numpy as np
import pytest

from quantune.search.dimension import prior_ordinal
from quantune.search.runner import run_search
from quantune.search.space import SearchSpace, categorical, config_key, ordinal
from quantune.search.xgboost_sampler import XGBoostSampler


def _space() -> SearchSpace:
    return SearchSpace([
        ordinal("w_bits", [2, 4, 8]),  # +1 guessed from the name
        prior_ordinal("granularity", ["per_channel", "per_tensor"], ("per_tensor", "per_channel")),
        ordinal("drop", [0, 1, 2], monotone=-1),  # float fallback of more layers: the other way
        categorical("method", ["minmax", "mse", "entropy"]),
        ordinal("pct", [99.9, 99.99]),
    ])


def _corner(c: dict) -> bool:
    return c["w_bits"] == 8 and c["granularity"] == "per_channel" and c["drop"] == 0


def test_draws_from_the_most_precise_configurations_first() -> None:
    space = _space()
    sampler = XGBoostSampler(space, seed=0)
    signs = sampler._monotone(1)
    assert signs == {"w_bits": 1, "granularity": 1, "drop": -1}
    visited: set[str] = set()
    drawn = []
    for n in range(8):
        config = sampler.preferred_unvisited(visited, signs, np.random.default_rng([0, n]))
        visited.add(config_key(config))
        drawn.append(config)
    # The corner holds 3 methods x 2 percentiles = 6 configurations; then the next-nearest.
    assert all(_corner(c) for c in drawn[:6])
    assert len({(c["method"], c["pct"]) for c in drawn[:6]}) == 6
    assert not any(_corner(c) for c in drawn[6:])
    # Next-nearest by value, not by index: drop=1 is 0.5 short of its end, w_bits=4 is
    # (8 - 4) / (8 - 2) = 0.67 short, per_tensor 1.0 short.
    assert all(c["drop"] == 1 and c["w_bits"] == 8 and c["granularity"] == "per_channel" for c in drawn[6:])


def test_without_priors_it_is_the_random_draw() -> None:
    space = _space()
    sampler = XGBoostSampler(space, seed=0)
    for n in range(5):
        a = sampler.preferred_unvisited(set(), {}, np.random.default_rng([1, n]))
        b = sampler.random_unvisited(set(), np.random.default_rng([1, n]))
        assert a == b


def test_spaces_too_large_to_list_are_sampled() -> None:
    dims = [ordinal("w_bits", [2, 4, 8])] + [categorical(f"c{i}", list(range(8))) for i in range(6)]
    space = SearchSpace(dims)
    assert space.size > 200_000
    sampler = XGBoostSampler(space, seed=0)
    config = sampler.preferred_unvisited(set(), {"w_bits": 1}, np.random.default_rng(0), n_samples=256)
    assert config["w_bits"] == 8


@pytest.mark.parametrize(("directions", "in_corner"), [("maximize", True), (["maximize", "minimize"], False)])
def test_xgboost_warm_up_follows_priors_in_single_objective_studies(directions, in_corner) -> None:
    """Metric vs size: more bits is better for one objective and worse for the other,
    so the priors do not apply and the warm-up stays uniform."""
    space = _space()

    def objective(c: dict, _handle: object) -> float | tuple[float, float]:
        acc = c["w_bits"] + (c["granularity"] == "per_channel") - c["drop"]
        return float(acc) if directions == "maximize" else (float(acc), float(c["w_bits"]))

    result = run_search(space, objective, strategy="xgboost", n_trials=4, seed=3,
                        directions=directions, sampler_options={"n_startup": 4, "n_rounds": 10})
    configs = [r.config for r in result.trials]
    assert len(configs) == 4
    # 6 of 54 configurations are in the corner: 4 uniform draws all land there with p ~ 1e-4.
    assert all(_corner(c) for c in configs) is in_corner


def test_unknown_warm_up_is_refused() -> None:
    with pytest.raises(ValueError, match="warmup must be one of"):
        XGBoostSampler(_space(), warmup="best")
