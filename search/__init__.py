"""Search: spaces, samplers (XGBoost cost model), objectives, bit allocation.

The public names below are imported lazily (PEP 562), so ``import quantune.search``
stays cheap: optuna is loaded by the first use of a sampler or of ``run_search``, and
xgboost by the first fit of the cost model.

Example:
    >>> from quantune.search import SearchSpace, Target, ordinal, categorical, run_search
    >>> space = SearchSpace([ordinal("bits", [4, 8]), categorical("scheme", ["sym", "asym"])])
    >>> result = run_search(space, lambda c: c["bits"] + (c["scheme"] == "asym"),
    ...                     strategy="random", n_trials=4, seed=0)
    >>> result.best_config
    {'bits': 8, 'scheme': 'asym'}
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "SearchSpace": "quantune.search.space",
    "Dimension": "quantune.search.space",
    "categorical": "quantune.search.space",
    "ordinal": "quantune.search.space",
    "config_key": "quantune.search.space",
    "Target": "quantune.search.target",
    "run_search": "quantune.search.runner",
    "SearchResult": "quantune.search.result",
    "TrialRecord": "quantune.search.result",
    "make_sampler": "quantune.search.strategies",
    "strategy_names": "quantune.search.strategies",
    "register_strategy": "quantune.search.strategies",
    "XGBoostSampler": "quantune.search.xgboost_sampler",
    "TrialHandle": "quantune.search.pruning",
    "BestSoFarPruner": "quantune.search.pruning",
    "Pruned": "quantune.search.pruning",
    "Landscape": "quantune.search.replay",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'quantune.search' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
