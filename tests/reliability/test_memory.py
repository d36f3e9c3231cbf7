"""Bounded memory: EfficientNet-Lite0 statistics collection and AdaQuant on N vs 4N samples.

Each size runs in a fresh process (``benchmarks/reliability.py --memory-child``) that
streams random 224x224 images made on the fly, so the peak RSS measures what quantune
itself holds. Streaming histograms keep statistics collection flat; AdaQuant caches each
layer's inputs and float targets up to ``adaquant_cache_mb`` whatever N is. The child
uses a 16 MB cache, which the large layers fill at both sizes, and both peaks may grow by
less than 10 % for 4x the data (issue 5's target) plus a stated run-to-run allowance.
Measured (2 cores, 1 thread, 2026-11-28), three runs: N=16 / 64: statistics 554-632 /
646-647 MB, AdaQuant 797-836 / 861-915 MB (the small late layers' caches still fill
between the two sizes). With a 64 MB cache, N=16
leaves most layers' caches a quarter full and AdaQuant grows 827 -> 952 MB as they fill.
Before the heap watch in batch loops (quantune.memory) AdaQuant grew 904 -> 1074 MB at
16 MB too.
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
CACHE_MB = 16
# Identical runs differ by up to ~90 MB in the statistics peak (541-630 MB at N=16: the
# heap layout left by the validation forwards), so one run per size gets this allowance.
NOISE_MB = 50
PEAK_LIMIT_MB = 1100  # model and runtime alone: ~430 MB


def _peak(n: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(BENCH), "--memory-child", str(n), "1", str(CACHE_MB)],
                         capture_output=True, text=True, env=env, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.models
def test_calibration_peak_rss_does_not_grow_with_the_calibration_set() -> None:
    pytest.importorskip("efficientnet_lite_pytorch", reason="pip install 'quantune[models]'")
    small, large = _peak(N), _peak(4 * N)
    assert large["stats_peak_mb"] < 1.10 * small["stats_peak_mb"] + NOISE_MB, (small, large)
    assert large["adaquant_peak_mb"] < 1.10 * small["adaquant_peak_mb"] + NOISE_MB, (small, large)
    assert large["adaquant_peak_mb"] <= PEAK_LIMIT_MB, large
