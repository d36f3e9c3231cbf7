"""One pass over the calibration data that records every quantizable layer's input statistics."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from quantune.batches import batch_size, iter_batches, run_checked
from quantune.calibration.histogram import DEFAULT_BINS, StreamingHistogram
from quantune.progress import progress_bar
from quantune.token_mask import real_tokens


def collect_input_stats(
    model: nn.Module,
    layer_names: list[str],
    data: Iterable[Any],
    *,
    max_samples: int | None = None,
    bins: int = DEFAULT_BINS,
    show_progress: bool = False,
    total_batches: int | None = None,
) -> tuple[dict[str, StreamingHistogram], int]:
    """Stream the data through ``model`` and histogram the input of each named layer.

    Returns:
        ``(stats, n_samples)``: one histogram per layer that ran, and the number of samples.
    """
    modules = dict(model.named_modules())
    stats = {n: StreamingHistogram(bins) for n in layer_names}

    def hook(name: str) -> Callable[..., None]:
        def fn(mod: nn.Module, inputs: tuple[Any, ...]) -> None:
            x = inputs[0]
            if torch.is_tensor(x) and x.is_floating_point():
                stats[name].update(real_tokens(x, "linear" if isinstance(mod, nn.Linear) else "other"))

        return fn

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in layer_names]
    n_samples = 0
    try:
        with torch.no_grad():
            bar = progress_bar(total=total_batches, desc="statistics", unit="batch", enable=show_progress)
            for i, batch in enumerate(iter_batches(data, max_samples)):
                run_checked(model, batch, i)
                n_samples += batch_size(batch)
                bar.update(1)
            bar.close()
    finally:
        for h in handles:
            h.remove()
    return {n: h for n, h in stats.items() if not h.empty}, n_samples

