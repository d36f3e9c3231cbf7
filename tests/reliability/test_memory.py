"""Bounded memory: EfficientNet-Lite0 statistics collection and AdaQuant on N vs 4N samples.

Each size runs in a fresh process (``benchmarks/reliability.py --memory-child``) that
streams random 224x224 images made on the fly, so the peak RSS measures what quantune
itself holds. Streaming histograms and AdaQuant's per-layer cache cap
(``adaquant_cache_mb``) keep the peak flat: 4N samples may cost at most 10% + 40 MB more
than N, and the whole run stays under PEAK_LIMIT_MB.
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
PEAK_LIMIT_MB = 1200


def _peak(n: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(BENCH), "--memory-child", str(n), "3"],
                         capture_output=True, text=True, env=env, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.models
def test_calibration_peak_rss_does_not_grow_with_the_calibration_set() -> None:
    pytest.importorskip("efficientnet_lite_pytorch", reason="pip install 'quantune[models]'")
    small, large = _peak(N), _peak(4 * N)
    for key in ("stats_peak_mb", "adaquant_peak_mb"):
        assert large[key] <= 1.10 * small[key] + 40, (key, small, large)
        assert large[key] <= PEAK_LIMIT_MB, (key, large)
