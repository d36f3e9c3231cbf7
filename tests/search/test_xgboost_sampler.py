"""The XGBoost cost-model sampler: no repeats, determinism, and it actually learns."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from quantune.search.optuna_bridge import record_config, suggest
from quantune.search.runner import run_search
from quantune.search.space import SearchSpace, categorical, config_key, ordinal
from quantune.search.target import Target
from quantune.search.xgboost_sampler import XGBoostSampler

FAST = {"n_rounds": 20}


def _space() -> SearchSpace:
    return SearchSpace(
        [
            ordinal("w_bits", [2, 3, 4, 5, 6, 7, 8]),
            ordinal("a_bits", [4, 5, 6, 7, 8]),
            ordinal("pct", [99.0, 99.9, 99.99, 99.999]),
            categorical("method", ["minmax", "mse", "entropy", "percentile"]),
            categorical("per_channel", [False, True]),
        ]
    )


def _landscape(c: dict) -> float:
    """Smooth synthetic accuracy: more bits help, one method and per-channel help."""
    acc = 70.0 - 6.0 * (8 - c["w_bits"]) ** 1.5 - 2.0 * (8 - c["a_bits"]) ** 1.3
    acc -= 0.8 * abs([99.0, 99.9, 99.99, 99.999].index(c["pct"]) - 2)
    acc += {"minmax": 0.0, "mse": 0.6, "entropy": 0.3, "percentile": -0.4}[c["method"]]
    return acc + (0.5 if c["per_channel"] else 0.0)


def _evals_to_optimum(strategy: str, seed: int, options: dict | None = None) -> int:
    space = _space()
    best = max(_landscape(c) for c in space.enumerate())
    assert sum(_landscape(c) == best for c in space.enumerate()) == 1
    result = run_search(
        space, _landscape, strategy=strategy, n_trials=space.size, seed=seed,
        target=Target(baseline=best, max_drop=0.0), sampler_options=options,
    )
    assert result.stop_reason == "target"
    return result.n_evaluations


def test_never_repeats_and_is_deterministic() -> None:
    space = SearchSpace([ordinal("a", range(6)), categorical("b", ["x", "y", "z"])])

    def run(seed: int) -> list[str]:
        result = run_search(space, lambda c: c["a"] * (1.0 if c["b"] == "y" else 0.5),
                            strategy="xgboost", n_trials=space.size, seed=seed,
                            sampler_options=FAST)
        return [config_key(t.config) for t in result.trials]

    keys = run(7)
    assert len(keys) == space.size == len(set(keys))  # exhausts without a repeat
    assert run(7) == keys
    assert run(8) != keys


@pytest.mark.parametrize("objective", ["rank", "regression"])
def test_finds_the_optimum_faster_than_random(objective: str) -> None:
    xgb = np.mean([_evals_to_optimum("xgboost", s, {**FAST, "objective": objective})
                   for s in range(3)])
    # One optimum among N configurations: random search without replacement needs
    # (N + 1) / 2 evaluations on average (560.5 here); it is run once as a sanity check.
    expected_random = (_space().size + 1) / 2
    assert xgb < expected_random / 10, xgb
    assert _evals_to_optimum("random", 0) > xgb


def test_large_space_uses_sampling_and_mutation() -> None:
    space = SearchSpace([ordinal(f"d{i}", range(8)) for i in range(6)])  # 262,144 configs
    assert space.size > 20_000

    def objective(c: dict) -> float:
        return -sum((c[f"d{i}"] - 5) ** 2 for i in range(6))

    result = run_search(space, objective, strategy="xgboost", n_trials=40, seed=0,
                        sampler_options={**FAST, "n_samples": 512})
    rnd = run_search(space, objective, strategy="random", n_trials=40, seed=0)
    assert result.best_value > rnd.best_value
    assert len({config_key(t.config) for t in result.trials}) == 40


def test_running_trials_of_other_workers_are_not_proposed() -> None:
    space = SearchSpace([ordinal("a", range(4))])
    study = optuna.create_study(direction="maximize", sampler=XGBoostSampler(space, seed=0))
    busy = []
    for _ in range(3):  # three "other workers" each hold one configuration, RUNNING
        trial = study.ask()
        config = suggest(space, trial)
        record_config(trial, config)
        busy.append(config["a"])
    assert sorted(busy) == sorted(set(busy))
    last = study.ask()
    assert suggest(space, last)["a"] not in busy


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ValueError):
        XGBoostSampler(_space(), epsilon=2.0)
    with pytest.raises(ValueError):
        XGBoostSampler(_space(), objective="huber")  # type: ignore[arg-type]
