"""Live landscapes: the committed exhaustive caches load, replay, and charge wall time."""

from __future__ import annotations

import json
from collections.abc import Callable
from types import ModuleType

import numpy as np
import pytest

from quantune.search.cost_model import CostEnsemble, TrainingSet, acquire
from quantune.search.replay import replay
from quantune.search.space import SearchSpace, categorical, ordinal
from quantune.search.xgboost_sampler import BITS_NAME, XGBoostSampler
from quantune.tune_space import ptq_space


@pytest.fixture(scope="module")
def live(benchmark_module: Callable[[str], ModuleType]) -> ModuleType:
    """benchmarks/search_live.py."""
    return benchmark_module("search_live")


@pytest.mark.parametrize("name", ["example", "efficientnet-lite0"])
def test_cache_is_exhaustive_and_timed(live: ModuleType, name: str) -> None:
    path = live.LANDSCAPES_DIR / f"{name}.json"
    doc = json.loads(path.read_text())
    space = ptq_space({k: tuple(v) for k, v in doc["dimensions"].items()})
    assert len(doc["points"]) == space.size  # every point of the space, once
    assert all(p["eval_s"] > 0 and np.isfinite(p["metric"]) for p in doc["points"])
    land = live.load_live(path)
    assert land.space.size == space.size and land.best == max(p["metric"] for p in doc["points"])


def test_replay_charges_the_evaluation_time_of_visited_points(live: ModuleType) -> None:
    land = live.load_live(live.LANDSCAPES_DIR / "example.json")
    land.reset()
    run = replay(land, "random", seed=0, budget=7, max_drop=100.0)  # met at once
    assert run.evals_to_target == 1
    assert land.spent[0] in set(land.eval_s.values())  # exactly the one visited point
    land.reset()
    replay(land, "grid", seed=0, max_drop=0.0)  # to the best: many visits, all charged
    assert land.spent[0] > 0
    assert land.spent[0] <= sum(land.eval_s.values()) + 1e-9


def test_run_live_rows_and_resolution(live: ModuleType) -> None:
    land = live.load_live(live.LANDSCAPES_DIR / "efficientnet-lite0.json")
    step = live.resolution(land)
    assert step == pytest.approx(100 / 48, abs=2e-3)  # one of the 48 evaluation images
    rows = live.run_live([land], strategies=("xgboost", "random"), seeds=2, log=False)
    assert [r["strategy"] for r in rows] == ["xgboost", "random"]
    for row in rows:
        assert row["landscape"] == "live:efficientnet-lite0" and row["seeds"] == 2
        assert row["wall_s_median"] >= row["eval_s_median"] > 0
        assert 1 <= row["evals_to_target_median"] <= land.space.size


def test_ensemble_members_differ_and_acquisitions_score_every_candidate() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((12, 3))
    data = TrainingSet(x, x @ np.array([3.0, -1.0, 0.5]), np.zeros(12, dtype=np.int64))
    ens = CostEnsemble(4, "regression", seed=1, n_rounds=10,
                       member_params=[{"max_depth": 1}, {"max_depth": 3}]).fit(data)
    preds = ens.predict_all(rng.random((20, 3)))
    assert preds.shape == (4, 20)
    assert np.allclose(preds.mean(axis=1), 0.0) and not np.allclose(preds[0], preds[1])
    for how in ("greedy", "ucb", "thompson"):
        assert acquire(preds, how, 1.0, np.random.default_rng(0)).shape == (20,)
    again = CostEnsemble(4, "regression", seed=1, n_rounds=10,
                         member_params=[{"max_depth": 1}, {"max_depth": 3}]).fit(data)
    assert np.array_equal(again.predict_all(np.ones((2, 3))), ens.predict_all(np.ones((2, 3))))


def test_bit_width_dimensions_get_a_monotone_prior() -> None:
    assert all(BITS_NAME.search(n) for n in ("w_bits", "a_bits", "Weight bit width"))
    assert not any(BITS_NAME.search(n) for n in ("orbit", "bitsy", "calib_samples"))
    space = SearchSpace([ordinal("w_bits", [2, 4, 8]), ordinal("pct", [99.0, 99.9]),
                         categorical("m", ["a", "b"])])
    sampler = XGBoostSampler(space, monotone="auto")
    assert sampler._tree_params(5, 1, 1)["monotone_constraints"] == "(1,0,0,0,0)"
    assert "monotone_constraints" not in sampler._tree_params(5, 2, 0)  # metric vs size
    assert "monotone_constraints" not in XGBoostSampler(space, monotone=None)._tree_params(5, 1, 0)


def test_covering_warmup_shows_every_value_early() -> None:
    space = SearchSpace([categorical("a", ["x", "y"]), categorical("b", ["p", "q", "r"]),
                         ordinal("c", [1, 2, 3, 4])])
    sampler = XGBoostSampler(space, seed=3, warmup="covering")
    seen: list[dict] = []
    for n in range(4):
        config = sampler.covering_unvisited(set(), seen, np.random.default_rng([3, n]))
        assert config is not None
        seen.append(config)
    for d in space.dimensions:  # four points show every value of every dimension
        assert {c[d.name] for c in seen} == set(d.values)
