"""MSE-optimal clipping: search the range whose quantization grid minimizes the expected error.

The error of a candidate range is measured against the actual quantization grid
(scale, zero point and clamp of :func:`quantune.quantizer.qparams_from_range`), so
rounding of the zero point and the restricted symmetric weight grid are accounted for.

- Activations: the expected error is integrated over the streamed histogram (midpoint
  rule on sub-points of each bin); when a bin is wider than the quantization step the
  rounding error inside it is the uniform-noise value ``step^2 / 12``.
- Weights: the exact error over the tensor, per output channel, vectorized over
  channels; a coarse grid of clip ratios is refined around each channel's best.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from quantune.calibration.hist_ops import one_sided, sample_points
from quantune.calibration.histogram import StreamingHistogram
from quantune.quantizer import qparams_from_range

COARSE_RATIOS = 24
FINE_RATIOS = 11
_MIN_RATIO = 0.02


def _fq_error(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Squared quantize-dequantize error of ``x`` (broadcast against scale / zero point)."""
    z = zp.to(x.dtype)
    q = torch.clamp(torch.round(x / scale) + z, qmin, qmax)
    return (x - (q - z) * scale) ** 2


def histogram_mse(
    h: StreamingHistogram,
    lo: torch.Tensor,
    hi: torch.Tensor,
    qmin: int,
    qmax: int,
    symmetric: bool,
    chunk: int = 64,
) -> torch.Tensor:
    """Expected squared quantization error of each candidate range ``(lo[r], hi[r])``."""
    x, w = sample_points(h, per_bin=4)
    # float32 is ample for ranking candidates and twice as fast as float64 here.
    x, w = x.float(), w.float()
    scale, zp = qparams_from_range(lo.float(), hi.float(), qmin, qmax, symmetric)
    out = []
    for s in range(0, lo.numel(), chunk):
        sc, z = scale[s : s + chunk, None], zp[s : s + chunk, None]
        err = _fq_error(x[None, :], sc, z, qmin, qmax)
        # Bins wider than the step alias with the grid at fixed sub-points: use the
        # uniform rounding-noise value for the part of the data inside the grid.
        inside = (x[None, :] >= (qmin - z) * sc) & (x[None, :] <= (qmax - z) * sc)
        coarse = inside & (h.bin_width > sc)
        err = torch.where(coarse, (sc * sc / 12.0).expand_as(err), err)
        out.append((err * w[None, :]).sum(1))
    return torch.cat(out)


def _best(errors: torch.Tensor, values: torch.Tensor) -> float:
    return float(values[int(torch.argmin(errors))])


def _refine(err_of: Callable[[torch.Tensor], torch.Tensor], hi_ratio: float = 1.0) -> float:
    """Best ratio in (0, hi_ratio]: coarse grid, then a fine grid around the coarse best."""
    coarse = torch.linspace(_MIN_RATIO, hi_ratio, COARSE_RATIOS, dtype=torch.float64)
    r0 = _best(err_of(coarse), coarse)
    step = (hi_ratio - _MIN_RATIO) / (COARSE_RATIOS - 1)
    fine = torch.linspace(max(r0 - step, _MIN_RATIO), min(r0 + step, hi_ratio), FINE_RATIOS, dtype=torch.float64)
    return _best(err_of(fine), fine)


def activation_mse_range(h: StreamingHistogram, qmin: int, qmax: int, symmetric: bool) -> tuple[float, float]:
    """MSE-optimal ``(lo, hi)`` of an activation from its histogram.

    One-sided data (``min >= 0``, unsigned grid) only clips the top; a symmetric grid
    searches one magnitude; otherwise both ends shrink together by a common ratio, then
    each end is refined alone (one round of coordinate descent), which handles skewed
    data such as GELU outputs.
    """
    def err(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        return histogram_mse(h, lo, hi, qmin, qmax, symmetric)

    if symmetric:
        amax = max(abs(h.min), abs(h.max))
        r = _refine(lambda rs: err(-rs * amax, rs * amax))
        return -r * amax, r * amax
    if one_sided(h):
        r = _refine(lambda rs: err(torch.zeros_like(rs), rs * h.max))
        return 0.0, r * h.max
    r = _refine(lambda rs: err(rs * h.min, rs * h.max))
    lo, hi = r * h.min, r * h.max
    r_lo = _refine(lambda rs: err(rs * h.min, torch.full_like(rs, hi)))
    lo = r_lo * h.min
    r_hi = _refine(lambda rs: err(torch.full_like(rs, lo), rs * h.max))
    return lo, r_hi * h.max


def _rows_error(rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int, symmetric: bool) -> torch.Tensor:
    scale, zp = qparams_from_range(lo, hi, qmin, qmax, symmetric)
    return _fq_error(rows, scale[:, None], zp[:, None], qmin, qmax).mean(1)


def weight_mse_range(
    rows: torch.Tensor, qmin: int, qmax: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row MSE-optimal ``(lo, hi)`` for ``rows`` ``[C, K]``, both ends shrunk by one ratio per row."""
    rows = rows.float()
    lo0, hi0 = rows.amin(1), rows.amax(1)
    coarse = torch.linspace(_MIN_RATIO, 1.0, COARSE_RATIOS)
    best_err = torch.full((rows.shape[0],), float("inf"))
    best_r = torch.ones(rows.shape[0])
    for r in coarse:
        e = _rows_error(rows, lo0 * r, hi0 * r, qmin, qmax, symmetric)
        better = e < best_err
        best_err, best_r = torch.where(better, e, best_err), torch.where(better, r, best_r)
    step = (1.0 - _MIN_RATIO) / (COARSE_RATIOS - 1)
    center = best_r.clone()
    for offset in torch.linspace(-step, step, FINE_RATIOS):
        r = (center + offset).clamp(_MIN_RATIO, 1.0)
        e = _rows_error(rows, lo0 * r, hi0 * r, qmin, qmax, symmetric)
        better = e < best_err
        best_err, best_r = torch.where(better, e, best_err), torch.where(better, r, best_r)
    return lo0 * best_r, hi0 * best_r
