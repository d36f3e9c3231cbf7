"""Transfer (XGB-T): the cost model warm-starts from other studies in the storage."""

from __future__ import annotations

import optuna

from quantune.search.optuna_bridge import (
    CONFIG_ATTR,
    DESCRIPTOR_ATTR,
    KEY_ATTR,
    distributions,
    to_params,
)
from quantune.search.runner import run_search
from quantune.search.space import SearchSpace, categorical, config_key, ordinal
from quantune.search.transfer import load_transfer_rows


def _space() -> SearchSpace:
    return SearchSpace([ordinal("bits", [2, 3, 4, 5, 6, 7, 8]),
                        categorical("method", ["minmax", "mse", "entropy"]),
                        categorical("per_channel", [False, True]),
                        ordinal("pct", [99.0, 99.9, 99.99])])


def _accuracy(c: dict, offset: float) -> float:
    bonus = {"minmax": 0.0, "mse": 1.0, "entropy": 0.4}[c["method"]]
    return offset - (8 - c["bits"]) ** 2 + bonus + 0.7 * c["per_channel"] - abs(c["pct"] - 99.9)


def _store(storage: optuna.storages.BaseStorage, name: str, space: SearchSpace,
           offset: float, descriptor: dict, metric=_accuracy) -> None:
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    study.set_user_attr(DESCRIPTOR_ATTR, descriptor)
    for config in space.enumerate():
        study.add_trial(optuna.trial.create_trial(
            params=to_params(space, config), distributions=distributions(space),
            value=metric(config, offset),
            user_attrs={CONFIG_ATTR: config, KEY_ATTR: config_key(config)}))


def test_rows_come_from_other_studies_of_the_same_space() -> None:
    storage = optuna.storages.InMemoryStorage()
    space = _space()
    _store(storage, "resnet", space, 70.0, {"params_m": 11.7})
    other_space = SearchSpace([ordinal("x", [1, 2, 3])])
    _store(storage, "unrelated", other_space, 0.0, {}, metric=lambda c, o: float(c["x"]))
    optuna.create_study(storage=storage, study_name="new", direction="maximize")
    rows = load_transfer_rows(storage, space, exclude_study="new")
    assert [r.study_name for r in rows] == ["resnet"]
    assert rows[0].features.shape == (space.size, space.n_features)
    assert rows[0].descriptor == {"params_m": 11.7}


def test_warm_start_proposes_the_transferred_optimum_first() -> None:
    space = _space()
    best = max(space.enumerate(), key=lambda c: _accuracy(c, 0.0))
    firsts_with, firsts_without = [], []
    for seed in range(3):
        storage = optuna.storages.InMemoryStorage()
        # Two earlier runs on other models whose landscapes share the shape (offsets differ).
        _store(storage, "mobilenet", space, 60.0, {"params_m": 3.5, "depthwise_share": 0.3})
        _store(storage, "resnet", space, 70.0, {"params_m": 11.7, "depthwise_share": 0.0})

        def objective(c: dict) -> float:
            return _accuracy(c, 76.0)

        options = {"n_rounds": 20, "epsilon": 0.0}
        warm = run_search(space, objective, strategy="xgboost", n_trials=1, seed=seed,
                          storage=storage, study_name="vit", sampler_options=options,
                          model_descriptor={"params_m": 88.0, "depthwise_share": 0.0})
        cold = run_search(space, objective, strategy="xgboost", n_trials=1, seed=seed,
                          sampler_options={**options, "transfer": False})
        firsts_with.append(warm.trials[0].config)
        firsts_without.append(cold.trials[0].config)
    assert all(c == best for c in firsts_with)
    assert not all(c == best for c in firsts_without)  # cold start is a random warm-up
