"""One pass over the calibration data that records every quantizable layer's input statistics."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from quantune.batches import batch_size, iter_batches, run_checked
from quantune.calibration.histogram import DEFAULT_BINS, StreamingHistogram
from quantune.input_smoothing import divide_input_channels
from quantune.memory import watched_batches
from quantune.progress import progress_bar
from quantune.token_mask import real_tokens


@dataclass
class InputStatistics:
    """What one pass records about each layer's input.

    Attributes:
        histograms: layer -> histogram of its input values (the range methods' input).
        channel_absmax: layer -> ``[C_in]`` largest magnitude per input channel (what
            SmoothQuant balances); a few floats per channel, whatever the data size.
        n_samples: calibration samples streamed.
    """

    histograms: dict[str, StreamingHistogram]
    channel_absmax: dict[str, torch.Tensor]
    n_samples: int


def input_kind(module: nn.Module) -> str:
    """``linear`` (channels last) for Linear layers (float or quantized), else ``conv`` (channels at dim 1)."""
    return "linear" if isinstance(module, nn.Linear) or getattr(module, "kind", None) == "linear" else "conv"


def _channel_absmax(x: torch.Tensor, kind: str) -> torch.Tensor:
    # max |x| = max(-min, max): one reduction pass and no copy of the activation. A conv
    # input is viewed as [batch, C, positions] (a transpose to [C, rest] would copy it:
    # 38 MB per call for EfficientNet-Lite0's widest layer at batch 8).
    x = x.detach()
    if kind == "linear":
        lo, hi = torch.aminmax(x.reshape(-1, x.shape[-1]), dim=0)
    else:
        lo, hi = torch.aminmax(x.reshape(x.shape[0], x.shape[1], -1), dim=2)
        lo, hi = lo.amin(dim=0), hi.amax(dim=0)
    return torch.maximum(-lo, hi).float()


def collect_input_stats(
    model: nn.Module,
    layer_names: list[str],
    data: Iterable[Any],
    *,
    max_samples: int | None = None,
    bins: int = DEFAULT_BINS,
    show_progress: bool = False,
    total_batches: int | None = None,
    input_scales: dict[str, torch.Tensor] | None = None,
) -> InputStatistics:
    """Stream the data through ``model`` and histogram the input of each named layer.

    ``input_scales``: layer -> per-input-channel divisor applied to its input before it
    is recorded (the statistics of a smoothed layer's quantizer input).

    Returns:
        One histogram and one per-channel maximum per layer that ran, and the number of samples.
    """
    modules = dict(model.named_modules())
    stats = {n: StreamingHistogram(bins) for n in layer_names}
    absmax: dict[str, torch.Tensor] = {}
    scales = input_scales or {}

    def hook(name: str) -> Callable[..., None]:
        kind = input_kind(modules[name])

        def fn(mod: nn.Module, inputs: tuple[Any, ...]) -> None:
            x = inputs[0]
            if not (torch.is_tensor(x) and x.is_floating_point()):
                return
            if name in scales:
                x = divide_input_channels(x, scales[name], kind)
            # Linear: real tokens only ([rows, C]); convolutions: the whole input.
            x = real_tokens(x, kind)
            stats[name].update(x)
            m = _channel_absmax(x, kind)
            absmax[name] = m if name not in absmax else torch.maximum(absmax[name], m)

        return fn

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in layer_names]
    n_samples = 0
    try:
        with torch.no_grad():
            bar = progress_bar(total=total_batches, desc="statistics", unit="batch", enable=show_progress)
            for i, batch in enumerate(watched_batches(iter_batches(data, max_samples))):
                run_checked(model, batch, i)
                n_samples += batch_size(batch)
                bar.update(1)
            bar.close()
    finally:
        for h in handles:
            h.remove()
    kept = {n: h for n, h in stats.items() if not h.empty}
    return InputStatistics(kept, {n: absmax[n] for n in kept}, n_samples)
