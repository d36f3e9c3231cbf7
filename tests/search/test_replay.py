"""Replay landscapes and the benchmark module; import cost of quantune.search."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from quantune.search.replay import Landscape, replay, summarize
from quantune.search.space import config_key

REPO = Path(__file__).resolve().parents[2]


def _landscape() -> Landscape:
    rows = [({"bits": b, "gptq": g}, 60.0 + b + (1.5 if g else 0.0))
            for b in (4, 6, 8) for g in (False, True) if not (b == 4 and g)]
    return Landscape.from_results("toy", rows, {"params_m": 1.0})


def test_landscape_from_pairs_and_from_a_cached_dict_agree() -> None:
    land = _landscape()
    assert land.space.size == 5 and land.best == 69.5 and land.n_within(0.1) == 1
    cached = {config_key(c): land.evaluate(c) for c in land.space.enumerate()}
    again = Landscape.from_results("toy", cached)
    assert again.table == land.table


def test_replay_counts_evaluations_until_the_target() -> None:
    land = _landscape()
    runs = [replay(land, "grid", seed) for seed in range(4)]
    assert all(r.evals_to_target is not None and 1 <= r.evals_to_target <= 5 for r in runs)
    assert all(r.best_so_far[-1] == land.best for r in runs)
    stats = summarize(runs, land.space.size)
    assert 1 <= stats["evals_to_target_median"] <= 5 and stats["reached"] == 4


def test_benchmark_loads_the_brevitas_landscapes(benchmark_module) -> None:
    bench = benchmark_module("search")
    path = bench.shared_data_dir() / "brevitas_ptq" / "RESULTS_TORCHVISION.csv"
    if not path.is_file():
        pytest.skip(f"shared data not found at {path}")
    lands = bench.load_brevitas_landscapes(path)
    assert [land.name for land in lands] == ["mobilenet_v2", "resnet18", "vit_b_32"]
    assert all(land.space.size == 540 for land in lands)
    assert lands[1].space.dimension("Weight bit width").kind == "ordinal"
    rows, _ = bench.run_landscapes(lands[1:2], ["random"], seeds=2, log=False)
    assert rows[0]["seeds"] == 2 and rows[0]["evals_to_target_median"] >= 1


def test_import_is_cheap() -> None:
    code = (
        "import sys, quantune.search, quantune.search.space;"
        "bad = [m for m in ('torch', 'optuna', 'xgboost') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO.parent)
