"""benchmarks/calibration.py: every layer-wise row key gets the run's layer-wise options."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest


@pytest.fixture(scope="module")
def bench(benchmark_module: Callable[[str], ModuleType]) -> ModuleType:
    return benchmark_module("calibration")


OPTIONS = {"adaround_iters": 77, "adaquant_iters": 55, "adaquant_time_budget_s": None,
           "layerwise_holdout": 0.0, "seed": 3, "synthetic_samples": 9,
           "augmented_samples": 21, "layerwise_loss": "fisher"}


@pytest.mark.parametrize("key", ["adaround", "brecq", "adaquant+biascorr", "gptq+brecq", "adaround@own"])
def test_layerwise_rows_receive_the_runs_options(bench, key):
    proc = bench.procedure(key, OPTIONS)
    assert (proc.adaround_iters, proc.adaquant_iters, proc.seed, proc.layerwise_holdout) == (77, 55, 3, 0.0)
    assert (proc.synthetic_samples, proc.augmented_samples) == (9, 21)
    assert proc.layerwise_float_target is (not key.endswith("@own"))
    assert proc.adaround_blocks is ("brecq" in key)
    # Block reconstruction fits block outputs with the plain error.
    assert proc.layerwise_loss == ("mse" if "brecq" in key else "fisher")


@pytest.mark.parametrize("key", ["base", "gptq+biascorr"])
def test_other_rows_keep_the_defaults(bench, key):
    proc = bench.procedure(key, OPTIONS)
    assert proc.seed == 0 and proc.adaround_iters != 77


def test_smoothing_rows_smooth_every_layer_including_the_8bit_edges(bench):
    from types import SimpleNamespace

    from quantune.config import CalibrationProcedure

    prepared = SimpleNamespace(layer_names=["first", "mid", "last"])
    cfg = bench.make_config(prepared, 4, 4, "mse", None, CalibrationProcedure(), smoothing=0.8)
    assert [cfg.for_layer(n).activation.smoothing for n in ("first", "mid", "last")] == [0.8] * 3
    assert cfg.for_layer("first").weight.bits == 8 and cfg.for_layer("mid").weight.bits == 4
    assert bench.make_config(prepared, 8, 8, "mse", None, CalibrationProcedure()).default.activation.smoothing is None
