"""Shared timing helper for the benchmarks: interleaved medians on a noisy shared CPU.

The machines these benchmarks run on are shared, so load changes while a benchmark
runs. Timing each method in its own block lets a burst of load land on one method only
and corrupts the ratios. :func:`time_interleaved` instead runs the methods round-robin
(one call of each per round) after a warm-up, and reports each method's median over
the rounds: every method sees the same load, so ratios measured in one call are fair
even when absolute times drift.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def time_interleaved(fns: Mapping[str, Callable[[], object]], **kwargs: object) -> dict[str, float]:
    """Median milliseconds of each callable, timed round-robin (see :func:`time_stats`)."""
    return {name: st["median_ms"] for name, st in time_stats(fns, **kwargs).items()}  # type: ignore[arg-type]


def time_stats(
    fns: Mapping[str, Callable[[], object]],
    *,
    min_rounds: int = 7,
    max_rounds: int = 200,
    budget_s: float = 2.0,
    warmup: int = 3,
    device: str = "cpu",
) -> dict[str, dict[str, float]]:
    """Median and minimum milliseconds of each callable, timed round-robin.

    The minimum is the better estimate of the uncontended time on an oversubscribed
    machine (a sample can only be slowed down by other load, never sped up); the
    median is what the benchmarks report by default.

    Args:
        fns: name -> zero-argument callable (one call = one timed sample).
        min_rounds: at least this many samples per method.
        max_rounds: at most this many samples per method.
        budget_s: stop adding rounds once this much wall time is spent (after
            ``min_rounds``), so big shapes do not hog a shared machine.
        warmup: untimed calls of each method first (prepacking, caches, JIT).
        device: ``cpu`` or ``cuda`` (synchronizes around each sample).

    Returns:
        name -> ``{"median_ms": ..., "min_ms": ..., "rounds": ...}``.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)

    def wall_ms(fn: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        return (time.perf_counter() - t0) * 1e3

    return _round_robin({name: lambda fn=fn: wall_ms(fn) for name, fn in fns.items()},
                        min_rounds, max_rounds, budget_s)


def _round_robin(samplers: Mapping[str, Callable[[], float]], min_rounds: int, max_rounds: int,
                 budget_s: float) -> dict[str, dict[str, float]]:
    """One sample (milliseconds) of each method per round until the rounds or the budget end."""
    samples: dict[str, list[float]] = {name: [] for name in samplers}
    start = time.perf_counter()
    for r in range(max_rounds):
        for name, sample in samplers.items():
            samples[name].append(sample())
        if r + 1 >= min_rounds and time.perf_counter() - start > budget_s:
            break
    return {name: {"median_ms": statistics.median(s), "min_ms": min(s), "rounds": len(s)}
            for name, s in samples.items()}

def time_cuda_graphs(
    fns: Mapping[str, Callable[[], object]],
    *,
    calls_per_graph: int = 20,
    min_rounds: int = 7,
    max_rounds: int = 100,
    budget_s: float = 2.0,
    warmup: int = 3,
) -> dict[str, dict[str, float]]:
    """Device milliseconds per call of each CUDA callable, from CUDA-graph replays.

    Each method's ``calls_per_graph`` back-to-back calls are captured once in a CUDA
    graph (after ``warmup`` eager calls: autotuning, caches), then the graphs are
    replayed round-robin between CUDA events. This times what the GPU does, without the
    Python and launch overhead that would otherwise decide small shapes, as serving
    stacks run them (CUDA graphs). A method that cannot be captured is timed eagerly
    between events instead and flagged ``graph: False``.

    Returns:
        name -> ``{"median_ms", "min_ms", "rounds", "graph"}`` per call.
    """
    import torch

    runs: dict[str, Callable[[], object]] = {}
    graphed: dict[str, bool] = {}
    for name, fn in fns.items():
        try:
            for _ in range(warmup):
                fn()
            torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001 - report the method, time the others
            print(f"  {name}: failed, not timed: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(calls_per_graph):
                    fn()
            runs[name], graphed[name] = graph.replay, True
        except Exception:  # noqa: BLE001 - any capture failure: fall back to eager timing
            torch.cuda.synchronize()

            def eager(fn: Callable[[], object] = fn) -> None:
                for _ in range(calls_per_graph):
                    fn()

            runs[name], graphed[name] = eager, False
        runs[name]()
    torch.cuda.synchronize()
    start_evt, end_evt = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def device_ms(run: Callable[[], object]) -> float:
        start_evt.record()
        run()
        end_evt.record()
        end_evt.synchronize()
        return start_evt.elapsed_time(end_evt) / calls_per_graph

    stats = _round_robin({name: lambda run=run: device_ms(run) for name, run in runs.items()},
                         min_rounds, max_rounds, budget_s)
    return {name: {**st, "graph": graphed[name]} for name, st in stats.items()}
