"""Drive layer-wise calibration (AdaQuant, AdaRound) over every quantized layer.

One loop for both methods: execution order, per-layer input caches within a memory
cap, the shared time budget and the progress bar; the per-layer optimization is the
method's own (:mod:`quantune.calibration.adaquant`, :mod:`quantune.calibration.adaround`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from quantune.batches import batch_size, run_model
from quantune.calibration.adaquant import AdaQuantResult, adaquant_layer
from quantune.calibration.adaround import AdaRoundResult, adaround_layer
from quantune.calibration.layer_io import (
    LayerSamples,
    RowSelector,
    bytes_per_row,
    collect_layer_samples,
    rows_per_sample,
    samples_per_pass,
)
from quantune.capture import LayerInfo
from quantune.config import CalibrationProcedure
from quantune.memory import release_free_memory
from quantune.modules import QuantizedLayer
from quantune.progress import progress_bar


def execution_order(model: nn.Module, names: list[str], batch: Any) -> list[str]:
    """``names`` sorted by when each module first runs on ``batch`` (unseen ones last)."""
    order: dict[str, int] = {}
    modules = dict(model.named_modules())

    def hook(name: str) -> Callable[..., None]:
        def fn(mod: nn.Module, inputs: tuple[Any, ...]) -> None:
            order.setdefault(name, len(order))

        return fn

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names if n in modules]
    try:
        with torch.no_grad():
            run_model(model, batch)
    finally:
        for h in handles:
            h.remove()
    return sorted(names, key=lambda n: order.get(n, len(names) + names.index(n)))


class LayerStep(Protocol):
    """Calibrate one layer in place on its cached samples, stopping at ``deadline``."""

    def __call__(self, name: str, layer: QuantizedLayer, samples: LayerSamples, *, seed: int,
                 deadline: float | None) -> Any: ...


def layer_step(method: str, procedure: CalibrationProcedure) -> LayerStep:
    """The per-layer calibration of ``method`` (``adaquant`` or ``adaround``) with the procedure's options."""

    def adaquant(name: str, layer: QuantizedLayer, samples: LayerSamples, *, seed: int,
                 deadline: float | None) -> AdaQuantResult:
        return adaquant_layer(name, layer, samples, iters=procedure.adaquant_iters, lr=procedure.adaquant_lr,
                              batch_size=procedure.adaquant_batch_size, seed=seed, deadline=deadline,
                              holdout=procedure.layerwise_holdout)

    def adaround(name: str, layer: QuantizedLayer, samples: LayerSamples, *, seed: int,
                 deadline: float | None) -> AdaRoundResult:
        return adaround_layer(name, layer, samples, iters=procedure.adaround_iters, lr=procedure.adaround_lr,
                              reg=procedure.adaround_reg, batch_size=procedure.adaround_batch_size, seed=seed,
                              deadline=deadline, holdout=procedure.layerwise_holdout)

    steps = {"adaquant": adaquant, "adaround": adaround}
    if method not in steps:
        raise ValueError(f"unknown layer-wise method {method!r}; use one of {sorted(steps)}")
    return steps[method]


def calibrate_layer(
    step: LayerStep,
    layer: QuantizedLayer,
    li: LayerInfo,
    float_model: nn.Module,
    input_model: nn.Module,
    batches: list[Any],
    procedure: CalibrationProcedure,
    *,
    index: int,
    seconds: float | None,
    per_pass: int | None = None,
) -> tuple[Any, float]:
    """Collect one layer's samples (capped to the procedure's cache, at most ``per_pass``
    samples per forward pass) and run ``step`` on them for at most ``seconds`` of
    optimisation (None: no limit; collecting is not counted).

    Returns:
        ``(result, seconds of optimisation)``; the result is None when the layer never
        ran on the calibration data.
    """
    n_samples = sum(batch_size(b) for b in batches)
    fisher = procedure.layerwise_loss == "fisher"
    selector = RowSelector.for_budget(
        bytes_per_row(li.input_shape, li.output_shape, li.kind, targets=2 if fisher else 1),
        n_samples * rows_per_sample(li.input_shape, li.kind),
        procedure.adaquant_cache_mb * 2**20,
        procedure.seed,
        index,
    )
    samples = collect_layer_samples(float_model, input_model, li.name, li.kind, batches, selector,
                                    procedure.layerwise_float_target, fisher=fisher, per_pass=per_pass)
    if samples is None:
        return None, 0.0
    release_free_memory()  # the passes' freed activations, before the step allocates (quantune.memory)
    started = time.perf_counter()
    deadline = None if seconds is None else started + seconds
    res = step(li.name, layer, samples, seed=procedure.seed * 7919 + index, deadline=deadline)
    return res, time.perf_counter() - started


def run_layerwise(
    qmodel: Any,
    float_model: nn.Module,
    layers: list[LayerInfo],
    batches: list[Any],
    procedure: CalibrationProcedure,
    method: str,
    *,
    show_progress: bool = False,
) -> list[Any]:
    """Calibrate every quantized layer of ``qmodel`` in execution order with ``method``.

    Args:
        qmodel: the :class:`quantune.quantized_model.QuantizedModel` (updated in place;
            it runs in simulate mode meanwhile).
        float_model: the float model (BatchNorm folded) that gives the targets.
        layers: descriptions of the quantizable layers (input / output shapes).
        batches: calibration batches (already capped to ``procedure.max_samples``).
        procedure: the method's options; sequential or not, cache cap, time budget, seed.
        method: ``adaquant`` or ``adaround``.
        show_progress: show a progress bar with layers done and ETA.

    Returns:
        One result (:class:`AdaQuantResult` or :class:`AdaRoundResult`) per calibrated layer.
    """
    step = layer_step(method, procedure)
    qlayers: dict[str, QuantizedLayer] = qmodel.quantized_layers()
    info = {li.name: li for li in layers}
    names = execution_order(float_model, [n for n in info if n in qlayers], batches[0])
    input_model = qmodel.model if procedure.adaquant_sequential else float_model
    qmodel.set_mode("simulate")
    budget = procedure.adaquant_time_budget_s
    per_pass = samples_per_pass(layers)
    # The budget is optimisation time: collecting a layer's inputs is a forward pass whose
    # cost depends on the data, not on the optimiser, and charging it to the budget left
    # deep models no time to optimise at all.
    optimised_s = 0.0
    results: list[Any] = []
    bar = progress_bar(total=len(names), desc=method, unit="layer", enable=show_progress)
    try:
        for k, name in enumerate(names):
            # Spread what is left of the budget evenly over the layers left.
            share = None if budget is None else max(budget - optimised_s, 0.0) / (len(names) - k)
            res, seconds = calibrate_layer(step, qlayers[name], info[name], float_model, input_model, batches,
                                           procedure, index=k, seconds=share, per_pass=per_pass)
            optimised_s += seconds
            # The layer's cached samples are garbage now; hand their pages back before the
            # next layer's arrive, or the process keeps them (see quantune.memory).
            release_free_memory()
            if res is not None:
                results.append(res)
                bar.set_postfix_str(f"{name} mse {res.mse_before:.2e}->{res.mse_after:.2e}")
            bar.update(1)
    finally:
        bar.close()
    return results

