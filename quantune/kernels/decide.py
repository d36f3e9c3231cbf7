"""Per-layer path decisions by measured latency: integer kernel or float.

Two kinds of layers can run slower on the integer path than in float:

- depthwise convolutions do ``k*k`` MACs per output and are memory bound: an int8
  kernel saves bandwidth on weights that are tiny anyway;
- on x86 CPUs without VNNI, 8-bit weights with ``|w| > 64`` need two u8 x s8 GEMMs to
  stay exact (see :mod:`quantune.kernels.onednn_pack`), which can cost more than fp32.

Rather than guess, such a layer times both paths once on its first real input and keeps
the faster one (the float path computes the simulated model: same codes, float
accumulation); the decision is recorded for reports (``QuantizedLayer.integer_decision``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

# A path must win by this margin to replace the integer one: noise on a shared machine
# is several percent, and the integer path is the one whose numerics match simulation.
FLOAT_MARGIN = 1.10

# Decisions of this process by layer geometry (see QuantizedLayer._decide).
DECISION_CACHE: dict[tuple[Any, ...], PathDecision] = {}


@dataclass(frozen=True)
class PathDecision:
    """Which path an integer-mode layer runs, and why.

    Attributes:
        path: ``integer`` or ``float``.
        backend: kernel backend of the integer path (``auto`` resolved), or ``float``.
        reason: ``measured`` (timed on a real input), ``default`` (not timed).
        integer_ms / float_ms: the median latencies measured, when measured.
    """

    path: str
    backend: str
    reason: str = "default"
    integer_ms: float | None = None
    float_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _median_ms(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def measure_paths(
    integer_fn: Callable[[], object],
    float_fn: Callable[[], object],
    backend: str,
    reps: int = 3,
) -> PathDecision:
    """Time both paths (warm-up, then two interleaved rounds of ``reps`` runs) and pick one."""
    integer_fn()
    float_fn()
    ti = _median_ms(integer_fn, reps)
    tf = _median_ms(float_fn, reps)
    ti = min(ti, _median_ms(integer_fn, reps))  # second round: less sensitive to a load burst
    tf = min(tf, _median_ms(float_fn, reps))
    if tf * FLOAT_MARGIN < ti:
        return PathDecision("float", "float", "measured", round(ti, 4), round(tf, 4))
    return PathDecision("integer", backend, "measured", round(ti, 4), round(tf, 4))
