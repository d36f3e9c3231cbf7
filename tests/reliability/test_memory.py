"""Bounded memory: EfficientNet-Lite0 statistics collection and AdaQuant on N vs 4N samples.

Each size runs in a fresh process (``benchmarks/reliability.py --memory-child``) that
streams random 224x224 images made on the fly, so the peak RSS measures what quantune
itself holds. Streaming histograms keep statistics collection flat (4N may cost at most
10% + 40 MB more than N); AdaQuant caches each layer's inputs and float targets up to
``adaquant_cache_mb`` (64 MB in the child) whatever N is, so its peak stays within
statistics peak + ADAQUANT_EXTRA_MB. Measured (2 cores, 1 thread, 2026-11-28): N=16:
stats 991 MB, AdaQuant 991 MB; N=64: stats 987 MB, AdaQuant 1109 MB (the cache reaches its
cap between the two sizes; above it the peak no longer grows). Without the heap trim
between layers (quantune.memory) AdaQuant at N=64 reached 1211-1535 MB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "reliability.py"
N = 16
PEAK_LIMIT_MB = 1500
ADAQUANT_EXTRA_MB = 5 * 64  # inputs + targets at the cap, plus per-layer temporaries


def _peak(n: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(BENCH), "--memory-child", str(n), "1"],
                         capture_output=True, text=True, env=env, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.models
def test_calibration_peak_rss_does_not_grow_with_the_calibration_set() -> None:
    pytest.importorskip("efficientnet_lite_pytorch", reason="pip install 'quantune[models]'")
    small, large = _peak(N), _peak(4 * N)
    assert large["stats_peak_mb"] <= 1.10 * small["stats_peak_mb"] + 40, (small, large)
    for run in (small, large):
        assert run["adaquant_peak_mb"] <= run["stats_peak_mb"] + ADAQUANT_EXTRA_MB, run
        assert run["adaquant_peak_mb"] <= PEAK_LIMIT_MB, run
