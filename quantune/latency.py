"""Wall-clock latency of a model on one batch (median of repeated runs, after warm-up)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

from quantune.batches import run_model


@torch.no_grad()
def measure_latency_ms(model: nn.Module, batch: Any, repeats: int = 10, warmup: int = 2) -> float:
    """Median milliseconds of ``model`` on ``batch``."""
    for _ in range(warmup):
        run_model(model, batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run_model(model, batch)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))
