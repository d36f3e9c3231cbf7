"""Per-layer latency x bit width, measured with the integer GEMM core on this machine.

Each quantizable layer is quantized at each candidate cell, switched to ``integer``
mode (the path a deployed model runs: integer codes, int32 accumulation, fused
epilogue) and timed alone on a random input of its recorded shape. The float layer is
timed too, so a layer kept float has a latency. The sum over layers is an estimate of
the model's quantized-layer time; what lies between layers (activations, pooling,
attention softmax) does not depend on the bit widths and is left out.

Timings are the median of ``repeats`` runs after ``warmup`` runs; they depend on the
machine and on its load, so they are cached only in memory.
"""

from __future__ import annotations

import statistics
import time
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from quantune.config import QuantConfig
from quantune.prepare import PreparedModel
from quantune.progress import progress_bar
from quantune.search.sensitivity_layers import quantized_layers

Cell = tuple[int, int]
# Per prepared model (weakly held, so a collected model frees its timings).
_CACHE: weakref.WeakKeyDictionary[PreparedModel, dict[tuple[Any, ...], dict[str, dict[object, float]]]] = (
    weakref.WeakKeyDictionary())


@torch.inference_mode()
def time_module(module: nn.Module, x: torch.Tensor, *, warmup: int = 1, repeats: int = 5) -> float:
    """Median wall-clock milliseconds of ``module(x)``."""
    for _ in range(warmup):
        module(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        module(x)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _example_input(shape: Sequence[int], batch: int, gen: torch.Generator) -> torch.Tensor | None:
    if not shape:  # the layer never ran on calibration data: nothing to time
        return None
    return torch.randn((batch, *shape), generator=gen)


def measure_latency(
    prepared: PreparedModel,
    cells: Sequence[Cell],
    *,
    base_config: QuantConfig | None = None,
    batch_size: int = 1,
    warmup: int = 1,
    repeats: int = 5,
    include_float: bool = True,
    show_progress: bool = True,
) -> dict[str, dict[object, float]]:
    """``{layer: {(w_bits, a_bits): ms, "float": ms}}`` for every quantizable layer.

    Args:
        prepared: The prepared model (layer input shapes were recorded on a real batch).
        cells: The ``(w_bits, a_bits)`` cells to time.
        base_config: Schemes and range methods (default ``QuantConfig()``).
        batch_size: Inputs per timed call.
        warmup: Untimed runs before timing.
        repeats: Timed runs (the median is kept).
        include_float: Also time the float layer (key ``"float"``).
        show_progress: Progress bar with ETA.
    """
    base = base_config or QuantConfig()
    key = (tuple(cells), base, batch_size, warmup, repeats, include_float, torch.get_num_threads())
    cache = _CACHE.setdefault(prepared, {})
    if key in cache:
        return cache[key]
    gen = torch.Generator().manual_seed(0)
    inputs = {info.name: _example_input(info.input_shape, batch_size, gen) for info in prepared.layers}
    table: dict[str, dict[object, float]] = {info.name: {} for info in prepared.layers}
    total = len(prepared.layers) * (len(cells) + int(include_float))
    with progress_bar(total=total, desc="latency", unit="layer", enable=show_progress) as bar:
        if include_float:
            for info in prepared.layers:
                x = inputs[info.name]
                module = prepared.float_model.get_submodule(info.name)
                table[info.name]["float"] = 0.0 if x is None else time_module(module, x, warmup=warmup, repeats=repeats)
                bar.update(1)
        for cell in cells:
            for name, layer in quantized_layers(prepared, base, cell).items():
                x = inputs[name]
                layer.mode = "integer"
                table[name][cell] = 0.0 if x is None else time_module(layer, x, warmup=warmup, repeats=repeats)
                bar.update(1)
    cache[key] = table
    return table
