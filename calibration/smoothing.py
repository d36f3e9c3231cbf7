"""SmoothQuant's per-input-channel scales (Xiao et al., 2023).

``s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha)``. Dividing input channel ``j`` by
``s_j`` and multiplying the weights that read it by ``s_j`` keeps the float product and
moves range between the two: at alpha 1 every input channel's maximum becomes 1 (the
per-tensor activation grid no longer serves a few outlier channels), at 0 every weight
column's maximum does. The weights are quantized per output channel, so the range they
take on costs them less than the activations' per-tensor grid loses.
"""

from __future__ import annotations

import torch

from quantune.input_smoothing import weights_by_input_channel

# Channels below this magnitude (dead inputs, all-zero weight columns) keep scale 1:
# their ratio means nothing and an extreme factor would wreck the other side's range.
_TINY = 1e-8
# Bounds on a factor, so no channel's weights or inputs leave float32's comfortable range.
_MIN_SCALE, _MAX_SCALE = 1e-4, 1e4


def smoothing_scales(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float, groups: int = 1) -> torch.Tensor:
    """``[C_in]`` float32 divisors of a layer's input channels.

    Args:
        act_absmax: the largest input magnitude seen per input channel (calibration data).
        weight: the layer's float weight (``[out, in]`` or ``[out, in/groups, *kernel]``).
        alpha: migration strength in [0, 1].
        groups: the convolution's groups (1 for Linear).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    a = act_absmax.detach().double()
    w = weights_by_input_channel(weight.detach(), groups).abs().amax(1).double()
    if a.shape != w.shape:
        raise ValueError(f"{a.numel()} input-channel maxima for a weight with {w.numel()} input channels")
    s = a.clamp(min=_TINY).pow(alpha) / w.clamp(min=_TINY).pow(1.0 - alpha)
    s = torch.where((a > _TINY) & (w > _TINY), s, torch.ones_like(s))
    return s.clamp(_MIN_SCALE, _MAX_SCALE).float()


__all__ = ["smoothing_scales"]
