"""Bias correction: remove the per-channel output shift that quantization leaves behind.

Quantization error is not zero-mean per output channel: ``E[(W_q - W) x]`` and the
clipping of activations shift every channel's mean, and the shifts accumulate through
the network (Nagel et al., "Data-Free Quantization", 2019). This is the empirical
variant (as AIMET's): on the calibration data, the per-channel mean of each quantized
layer's output is matched to the mean of the same layer's output in the float model.

Layers are corrected one at a time in execution order, each measured on the model
whose earlier layers are already corrected; correcting all at once from one pass would
remove an upstream shift twice (once at its source, once where it propagated to). Each
measurement runs the model only up to the layer (the hook stops the forward pass).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from quantune.batches import run_model
from quantune.calibration.channel_stats import ChannelMoments
from quantune.calibration.layer_io import StopForward
from quantune.calibration.layerwise import execution_order
from quantune.memory import watched_batches
from quantune.modules import QuantizedLayer
from quantune.progress import progress_bar
from quantune.token_mask import real_tokens


def output_means(model: nn.Module, kinds: dict[str, str], batches: list[Any], stop: bool) -> dict[str, ChannelMoments]:
    """Per-channel output moments of the named layers (stop after the single layer if ``stop``)."""
    moments = {n: ChannelMoments() for n in kinds}

    def hook(name: str) -> Callable[..., None]:
        def fn(mod: nn.Module, inputs: tuple[Any, ...], out: torch.Tensor) -> None:
            moments[name].update(real_tokens(out, kinds[name]), kinds[name])
            if stop:
                raise StopForward

        return fn

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in kinds]
    try:
        with torch.no_grad():
            for batch in watched_batches(batches):
                try:
                    run_model(model, batch)
                except StopForward:
                    pass
    finally:
        for h in handles:
            h.remove()
    return moments


@torch.no_grad()
def bias_correction(qmodel: Any, float_model: nn.Module, batches: list[Any], *, show_progress: bool = False) -> dict[str, float]:
    """Correct the bias of every quantized layer in place (the model runs in simulate mode).

    Args:
        qmodel: the quantized model.
        float_model: the float model (BatchNorm folded) whose output means are the target.
        batches: calibration batches.
        show_progress: show a progress bar over layers.

    Returns:
        Layer name -> mean absolute per-channel shift that was removed.
    """
    qlayers: dict[str, QuantizedLayer] = qmodel.quantized_layers()
    kinds = {n: m.kind for n, m in qlayers.items()}
    target = output_means(float_model, kinds, batches, stop=False)
    qmodel.set_mode("simulate")
    removed: dict[str, float] = {}
    names = execution_order(float_model, list(qlayers), batches[0])
    bar = progress_bar(total=len(names), desc="bias correction", unit="layer", enable=show_progress)
    for name in names:
        bar.update(1)
        if target[name].sum is None:  # the layer never ran
            continue
        got = output_means(qmodel.model, {name: kinds[name]}, batches, stop=True)[name]
        delta = (got.mean - target[name].mean).float()
        layer = qlayers[name]
        if layer.bias is None:
            layer.bias = nn.Parameter(-delta)
        else:
            layer.bias.sub_(delta)
        removed[name] = float(delta.abs().mean())
    bar.close()
    return removed
