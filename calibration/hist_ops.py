"""Read-only views of a :class:`StreamingHistogram` used by the range methods.

The histogram is treated as a piecewise-uniform density (the mass of a bin spread
evenly over it). Under that model the CDF is piecewise linear, which lets us re-bin
onto any grid exactly (e.g. the histogram of ``|x|`` needed by the entropy method)
and integrate quantization error over sub-points of each bin.
"""

from __future__ import annotations

import torch

from quantune.calibration.histogram import StreamingHistogram


def cdf(h: StreamingHistogram, x: torch.Tensor) -> torch.Tensor:
    """Mass (in counts) at or below each value of ``x`` (float64)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    pos = ((x - h.lo) / h.bin_width).clamp(0.0, float(h.bins))
    i = pos.floor().clamp(max=h.bins - 1).long()
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(h.counts, 0)])
    return cum[i] + (pos - i.double()) * h.counts[i]


def abs_histogram(h: StreamingHistogram, bins: int) -> tuple[torch.Tensor, float]:
    """Histogram of ``|x|`` on ``bins`` equal bins over ``[0, max|x|]``.

    Returns:
        ``(counts, amax)``; bin ``i`` covers ``[i, i+1] * amax / bins``.
    """
    amax = max(abs(h.min), abs(h.max), 1e-12)
    t = torch.linspace(0.0, amax, bins + 1, dtype=torch.float64)
    # Mass with |x| <= t is F(t) - F(-t); differences over the edges give the bins.
    inside = cdf(h, t) - cdf(h, -t)
    inside[0] = 0.0
    counts = torch.diff(inside).clamp_(min=0.0)
    return counts, amax


def sample_points(h: StreamingHistogram, per_bin: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_bin`` evenly spaced points inside every non-empty bin, with their weights.

    Integrating a function against these weighted points is the midpoint rule on
    ``per_bin`` sub-intervals of each bin, exact for the piecewise-uniform density up
    to the function's variation within a sub-interval.

    Returns:
        ``(x, w)`` float64, ``w`` summing to 1.
    """
    nz = torch.nonzero(h.counts > 0).reshape(-1)
    offsets = (torch.arange(per_bin, dtype=torch.float64) + 0.5) / per_bin
    x = h.lo + (nz.double()[:, None] + offsets[None, :]) * h.bin_width
    w = (h.counts[nz] / per_bin)[:, None].expand(-1, per_bin)
    w = w.reshape(-1)
    # Keep points inside the exact observed range (the edge bins may overhang it).
    x = x.reshape(-1).clamp(h.min, h.max)
    return x, w / w.sum()


def mean_abs_deviation(h: StreamingHistogram, center: float) -> float:
    """``E|x - center|`` under the histogram (used by the Laplace fit of ACIQ)."""
    x, w = sample_points(h, per_bin=2)
    return float((w * (x - center).abs()).sum())


def one_sided(h: StreamingHistogram) -> bool:
    """True when every observed value is >= 0 (e.g. after ReLU): clip only the top."""
    return h.min >= 0.0
