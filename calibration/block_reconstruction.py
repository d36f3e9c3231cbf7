"""Block reconstruction (BRECQ, Li et al., 2021): AdaRound over whole blocks.

Layer-wise AdaRound fits each layer's rounding to that layer's output. Inside an
inverted-bottleneck or residual block the layers are chained through nonlinearities
and a residual add, and what matters is the *block's* output: BRECQ learns the rounding
of every layer of a block jointly against it, so the projection can absorb what the
expansion and depthwise layers got wrong. Same relaxation and annealed regularizer as
:mod:`quantune.calibration.adaround`; each layer keeps its step sizes; sequential
inputs (the block's input in the already-rounded model) and, by default, the float
model's block output as the target, so each block also absorbs upstream error.

Steps draw whole calibration samples (blocks are not cut into windows: their padding
and strides would make a cut inexact). A block keeps its new rounding only if its error
fell on held-out calibration samples. Units that are not blocks (lone layers), and
blocks whose call is not one tensor in and one tensor out (a transformer layer called
with an attention mask), are calibrated layer-wise instead.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from quantune.batches import batch_size, largest_same_shape_batches, run_model
from quantune.calibration.adaround import (
    AdaRoundResult,
    WeightRounding,
    annealing_progress,
    output_error,
    rounding_penalty,
)
from quantune.calibration.blocks import ReconstructionUnit, find_units
from quantune.calibration.layer_batches import MIN_SAMPLES_TO_HOLD_OUT
from quantune.calibration.layerwise import calibrate_layer, execution_order, layer_step
from quantune.capture import LayerInfo
from quantune.config import CalibrationProcedure
from quantune.memory import release_free_memory, watched_batches
from quantune.modules import QuantizedLayer
from quantune.progress import progress_bar

#: Samples per forward pass when measuring a block's error on many samples.
EVAL_CHUNK = 16


@dataclass(frozen=True)
class BlockResult(AdaRoundResult):
    """What block reconstruction did to one block: :class:`AdaRoundResult`'s fields
    (``rows``: samples; ``mse_before`` / ``mse_after``: the block's output error on the
    check samples; ``flipped``: share of the block's weights rounded to the other
    neighbour than before) and the number of quantized ``layers`` in the block."""

    layers: int = 0


@dataclass
class BlockSamples:
    """A block's cached inputs ``x`` (from the model being calibrated), targets ``y``
    and the non-tensor keyword arguments it was called with (passed again on replay)."""

    x: torch.Tensor
    y: torch.Tensor
    kwargs: dict[str, Any]

    def run(self, block: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        """The block's output on the cached inputs ``idx``."""
        return block(self.x[idx], **self.kwargs)

    def __len__(self) -> int:
        return int(self.x.shape[0])


class BlockNotReplayable(Exception):
    """The block's call is not a single batch tensor in and a tensor out."""


def _capture(model: nn.Module, name: str, batches: list[Any], keep: torch.Tensor | None,
             want_input: bool, call_kwargs: dict[str, Any] | None = None) -> list[torch.Tensor]:
    """The input (``want_input``) or output of ``model``'s module ``name`` on every batch,
    only the samples whose index is in ``keep`` (None: all); ``call_kwargs`` receives
    the keyword arguments of the call."""
    module = dict(model.named_modules())[name]
    found: list[torch.Tensor] = []

    def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        if len(args) != 1 or not torch.is_tensor(args[0]) or any(torch.is_tensor(v) for v in kwargs.values()):
            raise BlockNotReplayable(name)
        if not torch.is_tensor(out) or out.shape[0] != args[0].shape[0]:
            raise BlockNotReplayable(name)
        found.append((args[0] if want_input else out).detach())
        if call_kwargs is not None:
            call_kwargs.update(kwargs)

    handle = module.register_forward_hook(hook, with_kwargs=True)
    offset = 0
    parts: list[torch.Tensor] = []
    try:
        with torch.no_grad():
            for batch in watched_batches(batches):
                found.clear()
                run_model(model, batch)
                n = batch_size(batch)
                if found:
                    t = found[0]
                    if keep is not None:
                        local = keep[(keep >= offset) & (keep < offset + n)] - offset
                        t = t[local]
                    parts.append(t)
                offset += n
    finally:
        handle.remove()
    return parts


def collect_block_samples(float_model: nn.Module, input_model: nn.Module, name: str, batches: list[Any],
                          *, cache_bytes: int, seed: int, float_target: bool) -> BlockSamples | None:
    """Inputs of block ``name`` in ``input_model`` and its targets, within ``cache_bytes``.

    The target is the float model's block output on the float model's own input
    (``float_target``) or the float block applied to the cached input. A seeded subset
    of samples is kept when all of them would not fit in ``cache_bytes``.

    Returns:
        None when the block never runs on the data.

    Raises:
        BlockNotReplayable: the block's call is not one batch tensor in and a tensor out.
    """
    # Blocks' activations of inputs of different sizes cannot be stacked: learn from the
    # size that holds the most samples.
    batches = largest_same_shape_batches(batches)
    kwargs: dict[str, Any] = {}
    first = _capture(input_model, name, batches[:1], None, True, kwargs)
    if not first:
        return None
    float_out = _capture(float_model, name, batches[:1], torch.arange(1), False)
    per_sample = (first[0][:1].numel() + float_out[0].numel()) * 4
    total = sum(batch_size(b) for b in batches)
    fits = max(1, cache_bytes // max(per_sample, 1))
    keep = None
    if total > fits:
        gen = torch.Generator().manual_seed(seed)
        keep = torch.sort(torch.randperm(total, generator=gen)[:fits]).values
    x = torch.cat(_capture(input_model, name, batches, keep, True))
    if float_target:
        y = torch.cat(_capture(float_model, name, batches, keep, False))
    else:
        block = dict(float_model.named_modules())[name]
        with torch.no_grad():
            y = torch.cat([block(x[i:i + EVAL_CHUNK], **kwargs) for i in range(0, len(x), EVAL_CHUNK)])
    return BlockSamples(x, y, kwargs)


def _split(n: int, holdout: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fit, check)`` sample indices: a seeded ``holdout`` share is checked, not fitted."""
    k = round(holdout * n)
    if holdout <= 0 or n < MIN_SAMPLES_TO_HOLD_OUT or k < 1:
        every = torch.arange(n)
        return every, every
    order = torch.randperm(n, generator=gen)
    return order[k:], order[:k]


@torch.no_grad()
def _block_mse(block: nn.Module, samples: BlockSamples, idx: torch.Tensor) -> float:
    total, count = 0.0, 0
    for i in range(0, len(idx), EVAL_CHUNK):
        part = idx[i:i + EVAL_CHUNK]
        diff = samples.run(block, part) - samples.y[part]
        total += float(diff.pow(2).sum())
        count += diff.numel()
    return total / max(count, 1)


def _substituted(layers: list[QuantizedLayer], weights: list[Any]) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    for layer, source in zip(layers, weights, strict=True):
        stack.enter_context(layer.substituted_weight(source))
    return stack


def reconstruct_block(
    name: str,
    block: nn.Module,
    layers: list[QuantizedLayer],
    samples: BlockSamples,
    procedure: CalibrationProcedure,
    *,
    seed: int,
    deadline: float | None = None,
) -> BlockResult:
    """Learn the rounding of every layer in ``block`` jointly; revert unless the error fell.

    Args:
        name: the block's module name (for the report).
        block: the block of the model being calibrated (simulate mode).
        layers: its quantized layers; their weights are replaced by the rounded ones.
        samples: cached block inputs and targets.
        procedure: AdaRound's options: ``adaround_iters``, ``adaround_lr``,
            ``adaround_reg``, ``adaround_batch_size`` (samples per step) and
            ``layerwise_holdout`` (share of the samples kept out of the optimization to
            decide whether the block keeps its new rounding).
        seed: seed of the minibatch draws and of the held-out split.
        deadline: ``time.perf_counter()`` value after which no further step starts.
    """
    iters, reg = procedure.adaround_iters, procedure.adaround_reg
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    fit, check = _split(len(samples), procedure.layerwise_holdout, gen)
    roundings = [WeightRounding(layer) for layer in layers]
    with _substituted(layers, [lambda r=r: r.start for r in roundings]):
        before = _block_mse(block, samples, check)
    variables = [r.v for r in roundings]
    opt = torch.optim.Adam(variables, lr=procedure.adaround_lr)
    done = 0
    with torch.enable_grad(), _substituted(layers, [r.soft_weight for r in roundings]):
        for step in range(iters):
            if deadline is not None and time.perf_counter() > deadline:
                break
            progress = annealing_progress(step, iters, start, deadline)
            idx = fit[torch.randint(len(fit), (min(procedure.adaround_batch_size, len(fit)),), generator=gen)]
            loss = output_error(samples.run(block, idx), samples.y[idx])
            loss = loss + rounding_penalty(roundings, progress, reg)
            # Gradients of the rounding logits only: the block's other parameters
            # (biases, norms) are not being trained and must not collect .grad.
            grads = torch.autograd.grad(loss, variables)
            for v, g in zip(variables, grads, strict=True):
                v.grad = g
            opt.step()
            done += 1
    hard = [r.hard_weight() for r in roundings]
    with _substituted(layers, [lambda w=w: w for w in hard]):
        after = _block_mse(block, samples, check)
    kept = after < before
    changed = sum(int((torch.round(r.start / r.scale) != torch.round(w / r.scale)).sum())
                  for r, w in zip(roundings, hard, strict=True))
    weights = sum(w.numel() for w in hard)
    if kept:
        with torch.no_grad():
            for layer, w in zip(layers, hard, strict=True):
                layer.weight.copy_(w)
    return BlockResult(name, len(samples), done, before, after if kept else before, time.perf_counter() - start,
                       kept, changed / max(weights, 1) if kept else 0.0, layers=len(layers))


def run_block_reconstruction(
    qmodel: Any,
    float_model: nn.Module,
    layers: list[LayerInfo],
    batches: list[Any],
    procedure: CalibrationProcedure,
    *,
    show_progress: bool = False,
) -> list[Any]:
    """AdaRound over every block of ``qmodel`` (layer-wise for lone layers), in execution order.

    Args and budget as :func:`quantune.calibration.layerwise.run_layerwise`; the time
    budget is spread over units (blocks and lone layers).

    Returns:
        One :class:`BlockResult` per reconstructed block and one
        :class:`~quantune.calibration.adaround.AdaRoundResult` per layer calibrated alone.
    """
    qlayers: dict[str, QuantizedLayer] = qmodel.quantized_layers()
    info = {li.name: li for li in layers}
    names = execution_order(float_model, [n for n in info if n in qlayers], batches[0])
    units = find_units(qmodel.model, names)
    input_model = qmodel.model if procedure.adaquant_sequential else float_model
    modules = dict(qmodel.model.named_modules())
    layer_wise = layer_step("adaround", procedure)
    qmodel.set_mode("simulate")
    budget = procedure.adaquant_time_budget_s
    optimised_s = 0.0
    results: list[Any] = []
    bar = progress_bar(total=len(units), desc="brecq", unit="unit", enable=show_progress)
    try:
        for k, unit in enumerate(units):
            share = None if budget is None else max(budget - optimised_s, 0.0) / (len(units) - k)
            done, seconds = _run_unit(unit, k, modules, qlayers, info, float_model, input_model, batches,
                                      procedure, layer_wise, share)
            optimised_s += seconds
            release_free_memory()  # the unit's cached samples are garbage now (quantune.memory)
            results.extend(done)
            if done:
                bar.set_postfix_str(f"{unit.name} mse {done[-1].mse_before:.2e}->{done[-1].mse_after:.2e}")
            bar.update(1)
    finally:
        bar.close()
    return results


def _run_unit(unit: ReconstructionUnit, index: int, modules: dict[str, nn.Module],
              qlayers: dict[str, QuantizedLayer], info: dict[str, LayerInfo], float_model: nn.Module,
              input_model: nn.Module, batches: list[Any], procedure: CalibrationProcedure,
              layer_wise: Any, seconds: float | None) -> tuple[list[Any], float]:
    """Calibrate one unit: the block as a whole, or its layers one by one."""
    if unit.is_block:
        try:
            samples = collect_block_samples(
                float_model, input_model, unit.name, batches, cache_bytes=procedure.adaquant_cache_mb * 2**20,
                seed=procedure.seed * 7919 + index, float_target=procedure.layerwise_float_target)
        except BlockNotReplayable:
            samples = None  # fall through to layer-wise
        else:
            if samples is None:
                return [], 0.0
            started = time.perf_counter()
            res = reconstruct_block(unit.name, modules[unit.name], [qlayers[n] for n in unit.layers], samples,
                                    procedure, seed=procedure.seed * 7919 + index,
                                    deadline=None if seconds is None else started + seconds)
            return [res], time.perf_counter() - started
    out: list[Any] = []
    spent = 0.0
    for j, name in enumerate(unit.layers):
        share = None if seconds is None else max(seconds - spent, 0.0) / (len(unit.layers) - j)
        res, took = calibrate_layer(layer_wise, qlayers[name], info[name], float_model, input_model, batches,
                                    procedure, index=index * 1000 + j, seconds=share)
        spent += took
        if res is not None:
            out.append(res)
    return out, spent
