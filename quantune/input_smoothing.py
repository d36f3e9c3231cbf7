"""Per-input-channel smoothing (SmoothQuant): how a layer's weight and input share a channel scale.

``y = W x = (W diag(s)) (x / s)``: dividing input channel ``j`` by ``s_j`` and multiplying
every weight that reads channel ``j`` by ``s_j`` leaves the float product unchanged. For
a grouped convolution (``groups`` G, ``C`` input and ``O`` output channels) the weight is
``[O, C/G, *kernel]`` and output channel ``o`` reads input channels
``(o // (O/G)) * (C/G) + j``; Linear layers and ungrouped convolutions are the G = 1 case.
"""

from __future__ import annotations

import torch


def weights_by_input_channel(weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """``[C_in, n]``: row ``j`` holds every weight that multiplies input channel ``j``."""
    out_ch, per_group = weight.shape[0], weight.shape[1]
    taps = weight[0, 0].numel()
    w = weight.reshape(groups, out_ch // groups, per_group, taps)
    return w.permute(0, 2, 1, 3).reshape(groups * per_group, -1)


def input_channel_factors(scales: torch.Tensor, weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """``scales`` (one per input channel) arranged to multiply ``weight`` elementwise."""
    out_ch, per_group = weight.shape[0], weight.shape[1]
    s = scales.reshape(groups, 1, per_group).expand(groups, out_ch // groups, per_group)
    return s.reshape(out_ch, per_group, *([1] * (weight.dim() - 2)))


def divide_input_channels(x: torch.Tensor, scales: torch.Tensor, kind: str) -> torch.Tensor:
    """``x`` with input channel ``j`` divided by ``scales[j]`` (channels last for Linear,
    dim 1 for convolutions; the memory format is kept)."""
    if kind == "linear":
        return x / scales
    return x / scales.reshape(1, -1, *([1] * (x.dim() - 2)))
