"""run_search: strategies, failures, targets, multi-objective, pruning, repeats."""

from __future__ import annotations

import math
import time

import pytest

from quantune.errors import UserInputError
from quantune.search.pruning import BestSoFarPruner, TrialHandle
from quantune.search.runner import run_search
from quantune.search.space import SearchSpace, categorical, config_key, ordinal
from quantune.search.strategies import make_sampler, strategy_names
from quantune.search.target import Target

FAST = {"n_rounds": 20}


def _space() -> SearchSpace:
    return SearchSpace([ordinal("bits", [2, 4, 6, 8]), categorical("scheme", ["sym", "asym"]),
                        ordinal("pct", [99.0, 99.9, 99.99])])


def _metric(c: dict) -> float:
    return 10.0 * c["bits"] + (1.0 if c["scheme"] == "asym" else 0.0) - abs(c["pct"] - 99.9)


@pytest.mark.parametrize("strategy", ["xgboost", "random", "grid", "genetic", "tpe"])
def test_every_strategy_runs_through_the_same_loop(strategy: str) -> None:
    space = _space()
    result = run_search(space, _metric, strategy=strategy, n_trials=10, seed=0,
                        sampler_options=FAST if strategy == "xgboost" else None)
    assert result.n_evaluations == 10
    assert result.stop_reason == "n_trials"
    assert result.best is not None and space.contains(result.best.config)
    evaluated = [config_key(t.config) for t in result.trials if not t.cached]
    assert len(evaluated) == len(set(evaluated)) == 10  # never evaluated twice


def test_registry_names_and_unknown_strategy() -> None:
    assert set(strategy_names()) >= {"xgboost", "random", "grid", "genetic", "tpe"}
    with pytest.raises(UserInputError, match="unknown search strategy"):
        make_sampler("annealing", _space())


def test_failed_and_nan_trials_are_recorded_and_the_search_goes_on() -> None:
    def objective(c: dict) -> float:
        if c["bits"] == 2:
            raise RuntimeError("kernel crashed")
        if c["bits"] == 4:
            return math.nan
        return _metric(c)

    result = run_search(_space(), objective, strategy="grid", n_trials=24, seed=0)
    states = [t.state for t in result.trials]
    assert states.count("FAIL") == 12 and states.count("COMPLETE") == 12
    errors = {t.error.split(":")[0] for t in result.trials if t.state == "FAIL"}
    assert errors == {"RuntimeError", "ValueError"}
    assert any("kernel crashed" in t.error for t in result.trials if t.error)
    assert result.best.config["bits"] == 8
    assert result.stop_reason in ("n_trials", "exhausted")


def test_all_failures_return_no_best_but_no_exception() -> None:
    def objective(c: dict) -> float:
        raise ValueError("bad")

    result = run_search(_space(), objective, strategy="random", n_trials=3, seed=0)
    assert result.best is None and not result.target_reached
    assert result.n_evaluations == 3


def test_target_stops_single_objective_search() -> None:
    result = run_search(_space(), _metric, strategy="grid", n_trials=24, seed=1,
                        target=Target(baseline=81.0, max_drop=0.5))
    assert result.stop_reason == "target" and result.target_reached
    assert result.best_value >= 80.5
    assert result.n_evaluations < 24


def test_unreached_target_still_returns_the_best() -> None:
    result = run_search(_space(), _metric, strategy="random", n_trials=5, seed=0,
                        target=Target(baseline=1000.0, max_drop=1.0))
    assert not result.target_reached and result.best is not None
    assert result.best_value == max(t.value for t in result.trials if t.value is not None)


def test_multi_objective_finds_the_smallest_config_meeting_the_target() -> None:
    def objective(c: dict) -> tuple[float, float]:
        return _metric(c), c["bits"] * 1.0  # (accuracy, size)

    target = Target(baseline=_metric({"bits": 8, "scheme": "asym", "pct": 99.9}), max_drop=20.5)
    result = run_search(_space(), objective, strategy="xgboost", n_trials=24, seed=0,
                        directions=("maximize", "minimize"), target=target,
                        sampler_options=FAST)
    assert result.stop_reason in ("n_trials", "exhausted")  # keeps searching
    assert result.target_reached
    assert result.best.config["bits"] == 6  # 6 bits is the smallest meeting the target
    assert result.pareto_front and all(len(t.values) == 2 for t in result.pareto_front)
    assert result.to_dict()["pareto_front"]


def test_objective_can_report_partial_metrics_and_be_pruned() -> None:
    calls = []

    def objective(c: dict, handle: TrialHandle) -> float:
        final = _metric(c)
        for step, fraction in enumerate((0.25, 0.5, 1.0)):
            calls.append(handle.number)
            handle.prune_if_hopeless(final * fraction + 60 * (1 - fraction), step)
        return final

    result = run_search(_space(), objective, strategy="grid", n_trials=24, seed=0,
                        pruner=BestSoFarPruner(margin=5.0, n_startup=2))
    states = [t.state for t in result.trials]
    assert "PRUNED" in states and "COMPLETE" in states
    assert result.best.config["bits"] == 8
    assert len(calls) < 24 * 3  # pruned trials stopped early


def test_repeated_proposals_are_answered_from_the_study() -> None:
    space = SearchSpace([ordinal("a", [0, 1, 2])])
    calls = []

    def objective(c: dict) -> float:
        calls.append(c["a"])
        return float(c["a"])

    result = run_search(space, objective, strategy="tpe", n_trials=50, seed=0)
    assert sorted(calls) == [0, 1, 2]  # each configuration evaluated once
    assert result.stop_reason == "exhausted"


def test_timeout_stops_the_search_and_keeps_the_best() -> None:
    def slow(c: dict) -> float:
        time.sleep(0.05)
        return _metric(c)

    result = run_search(_space(), slow, strategy="random", n_trials=None, timeout_s=0.3, seed=0)
    assert result.stop_reason == "timeout"
    assert 1 <= result.n_evaluations < 24 and result.best is not None


def test_heartbeat_mode_for_shared_rdb_storages(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    result = run_search(_space(), _metric, strategy="random", n_trials=2, seed=0,
                        storage=storage, study_name="w", heartbeat_interval_s=30)
    assert result.n_evaluations == 2
    with pytest.raises(UserInputError, match="RDB"):
        run_search(_space(), _metric, n_trials=1, heartbeat_interval_s=30)


def test_resuming_with_other_directions_is_refused(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'dirs.db'}"
    run_search(_space(), _metric, strategy="random", n_trials=1, storage=storage, study_name="d")
    with pytest.raises(UserInputError, match="directions"):
        run_search(_space(), lambda c: (1.0, 2.0), strategy="random", n_trials=2,
                   storage=storage, study_name="d", directions=("maximize", "minimize"))


def test_bad_arguments_raise_user_errors() -> None:
    with pytest.raises(UserInputError):
        run_search(_space(), _metric, directions=("up",))
    with pytest.raises(UserInputError):
        run_search(_space(), _metric, n_trials=0)
    with pytest.raises(UserInputError):
        Target(baseline=1.0, max_drop=5.0, relative=True)
    assert Target(baseline=80.0, max_drop=0.01, relative=True).threshold() == pytest.approx(79.2)
