"""Weight range methods: a weight tensor + its spec -> per-channel or per-tensor ``(lo, hi)``.

All methods are vectorized over output channels (rows of the ``[C_out, -1]`` view); a
per-tensor spec is the single-row case.
"""

from __future__ import annotations

import torch

from quantune.calibration import aciq
from quantune.calibration.entropy import abs_histograms, entropy_thresholds, levels_for, min_bins
from quantune.calibration.mse import weight_mse_range
from quantune.config import WeightQuant
from quantune.modules import weight_qrange

# Entropy needs a window of MIN_BINS_PER_LEVEL histogram bins per quantization level
# (see quantune.calibration.entropy) and room below the full range to clip into; with
# fewer than ~16 values per bin the histogram is sampling noise and the divergence
# picks arbitrary thresholds. Rows too small for both keep min/max (per-channel 8-bit
# weights almost always, depthwise 3x3 kernels at any width).
_CLIP_ROOM = 8  # the histogram spans 8x the smallest window: thresholds down to amax/8
_MIN_VALUES_PER_BIN = 16


def weight_rows(w: torch.Tensor, spec: WeightQuant) -> torch.Tensor:
    """``[C_out, K]`` view for per-channel specs, ``[1, numel]`` for per-tensor ones."""
    w = w.detach().float()
    return w.reshape(w.shape[0], -1) if spec.granularity == "per_channel" else w.reshape(1, -1)


def weight_minmax(rows: torch.Tensor, spec: WeightQuant) -> tuple[torch.Tensor, torch.Tensor]:
    return rows.amin(1), rows.amax(1)


def weight_percentile(rows: torch.Tensor, spec: WeightQuant) -> tuple[torch.Tensor, torch.Tensor]:
    p = float(spec.percentile) / 100.0
    return torch.quantile(rows, 1.0 - p, dim=1), torch.quantile(rows, p, dim=1)


def weight_entropy(rows: torch.Tensor, spec: WeightQuant) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row KL threshold on ``|w|`` (half the levels per side, like a symmetric grid)."""
    n_levels = levels_for(spec.bits, one_sided=False)
    lo, hi = rows.amin(1), rows.amax(1)
    bins = min(_CLIP_ROOM * min_bins(n_levels), rows.shape[1] // _MIN_VALUES_PER_BIN)
    if bins <= min_bins(n_levels):
        return lo, hi
    counts, amax = abs_histograms(rows, bins)
    t = (entropy_thresholds(counts, n_levels).double() * amax / bins).float()
    return torch.maximum(lo, -t), torch.minimum(hi, t)


def weight_mse(rows: torch.Tensor, spec: WeightQuant) -> tuple[torch.Tensor, torch.Tensor]:
    qmin, qmax = weight_qrange(spec)
    return weight_mse_range(rows, qmin, qmax, spec.symmetric)


def weight_aciq(rows: torch.Tensor, spec: WeightQuant) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean +- alpha`` per row; plain ``aciq`` picks the prior per row from its shape."""
    mu = rows.mean(1, keepdim=True)
    mad = (rows - mu).abs().mean(1)
    std = rows.std(1, unbiased=False)
    mu = mu.squeeze(1)
    k_lap = aciq.alpha_factor(spec.bits, "laplace")
    k_gau = aciq.alpha_factor(spec.bits, "gaussian")
    forced = aciq.distribution_of(spec.method)
    if forced == "laplace":
        alpha = k_lap * mad
    elif forced == "gaussian":
        alpha = k_gau * std
    else:
        # Same rule as aciq.choose_distribution, vectorized over rows.
        ratio = mad / std.clamp(min=1e-12)
        gauss = (ratio - 0.7979).abs() < (ratio - 0.7071).abs()
        alpha = torch.where(gauss, k_gau * std, k_lap * mad)
    lo, hi = rows.amin(1), rows.amax(1)
    return torch.maximum(lo, mu - alpha), torch.minimum(hi, mu + alpha)
