"""Entropy calibration: the clipping threshold that minimizes KL(P || Q), as TensorRT does.

For a histogram of ``|x|`` with ``B`` bins and a candidate threshold at bin ``i``:

- ``P`` (the reference) is the first ``i`` bins with all the mass beyond ``i`` folded
  into the last bin (clipping moves the outliers onto the threshold);
- ``Q`` (the candidate) is the first ``i`` bins, without the outliers, merged into
  ``n_levels`` groups of ``i / n_levels`` bins (fractional group edges, so every group
  gets an equal share of the window) and expanded back: each group's mass is spread
  evenly over its bins that are non-empty in the histogram (what a quantizer with
  ``n_levels`` levels can represent);
- both are smoothed (empty bins get a small epsilon taken from the others, as in
  TensorRT / MXNet) so that the divergence stays finite.

Three details decide whether the result is meaningful (the first two follow NVIDIA's
``pytorch_quantization`` reference, the third is quantune's):

- bin 0 takes the count of bin 1: the exact zeros of ReLU / ReLU6 outputs form a spike
  that any level spreads over its bins, which made the divergence favour the windows
  where the first level is a single bin (zero is always represented exactly anyway);
- among equal divergences the largest threshold wins;
- the window must hold at least ``MIN_BINS_PER_LEVEL`` bins per quantization level.
  With one bin per level ``Q`` equals ``P`` except for the outliers: rounding error is
  invisible to the comparison, so the smallest window "wins" (on EfficientNet-Lite0's
  ReLU6 layers that clipped 6.0 to 1.5 and made W8A8 useless).

The functions work on a batch of histograms ``[C, B]`` at once, so per-channel weight
calibration is vectorized.
"""

from __future__ import annotations

import torch

#: Smallest number of histogram bins per quantization level a candidate window may have.
MIN_BINS_PER_LEVEL = 4
# Smoothing mass per empty bin, in counts (MXNet / TVM's _smooth_distribution).
_EPS = 1e-4


def min_bins(n_levels: int) -> int:
    """Histogram bins the smallest candidate window needs for ``n_levels`` levels."""
    return MIN_BINS_PER_LEVEL * n_levels


def _smooth(d: torch.Tensor) -> torch.Tensor:
    """Give empty bins ``_EPS`` counts, taken evenly from the non-empty ones (rows of ``d``)."""
    zeros = d <= 0
    n_zero = zeros.sum(1, keepdim=True).to(d.dtype)
    n_nonzero = (~zeros).sum(1, keepdim=True).to(d.dtype).clamp(min=1.0)
    take = _EPS * n_zero / n_nonzero
    return torch.where(zeros, torch.full_like(d, _EPS), (d - take).clamp(min=_EPS * 1e-3))


def kl_divergence_per_threshold(hist: torch.Tensor, i: int, n_levels: int) -> torch.Tensor:
    """``KL(P || Q)`` of every row of ``hist`` ``[C, B]`` for the threshold at bin ``i``.

    ``hist`` is used as given (callers suppress the zero spike first, see
    :func:`entropy_thresholds`).
    """
    sliced = hist[:, :i]
    p = sliced.clone()
    p[:, -1] += hist[:, i:].sum(1)
    nonzero = sliced > 0
    # Group of bin k: floor(k * n_levels / i), i.e. level edges at multiples of i / n_levels.
    group = torch.div(torch.arange(i) * n_levels, i, rounding_mode="floor")
    q_mass = torch.zeros(hist.shape[0], n_levels, dtype=hist.dtype).index_add_(1, group, sliced)
    q_bins = torch.zeros(hist.shape[0], n_levels, dtype=hist.dtype).index_add_(1, group, nonzero.to(hist.dtype))
    q = torch.where(nonzero, q_mass[:, group] / q_bins[:, group].clamp(min=1.0), torch.zeros_like(p))
    p, q = _smooth(p), _smooth(q)
    p = p / p.sum(1, keepdim=True)
    q = q / q.sum(1, keepdim=True)
    return (p * torch.log(p / q)).sum(1)


def entropy_thresholds(hist: torch.Tensor, n_levels: int, max_candidates: int = 128) -> torch.Tensor:
    """Best threshold bin count (``1..B``) per row of ``hist`` ``[C, B]`` (counts of ``|x|``).

    Candidates run from :func:`min_bins` ``(n_levels)`` bins to all ``B`` bins, strided
    so that at most ``max_candidates`` are evaluated; a single row is then refined bin
    by bin around its coarse best. Rows that are all zero, and histograms too coarse
    for any clipping window (``B <= min_bins(n_levels)``), get ``B`` (no clipping).

    Returns:
        long tensor ``[C]``; the threshold value is ``result * amax / B``.
    """
    hist = hist.double().clone()
    n_rows, n_bins = hist.shape
    first = min_bins(n_levels)
    if n_bins <= first:
        return torch.full((n_rows,), n_bins, dtype=torch.long)
    hist[:, 0] = hist[:, 1]  # the exact-zero spike says nothing about the threshold
    stride = max(1, -(-(n_bins - first) // max_candidates))
    candidates = list(range(first, n_bins + 1, stride))
    if candidates[-1] != n_bins:
        candidates.append(n_bins)
    best_kl = torch.full((n_rows,), float("inf"), dtype=torch.float64)
    best_i = torch.full((n_rows,), n_bins, dtype=torch.long)

    def consider(i: int) -> None:
        nonlocal best_kl, best_i
        kl = kl_divergence_per_threshold(hist, i, n_levels)
        # Ties go to the larger threshold (candidates may come in any order).
        better = (kl < best_kl) | ((kl == best_kl) & (i > best_i))
        best_kl = torch.where(better, kl, best_kl)
        best_i = torch.where(better, torch.full_like(best_i, i), best_i)

    for i in candidates:
        consider(i)
    if n_rows == 1 and stride > 1:
        center = int(best_i[0])
        for i in range(max(first, center - stride + 1), min(n_bins, center + stride - 1) + 1):
            if i != center:
                consider(i)
    empty = hist.sum(1) <= 0
    return torch.where(empty, torch.full_like(best_i, n_bins), best_i)


def levels_for(bits: int, one_sided: bool) -> int:
    """Quantization levels covering ``[0, threshold]``.

    A symmetric signed grid spends half its codes on each side (128 for int8, as in
    TensorRT); an unsigned grid over non-negative data spends all ``2**bits``.
    """
    return 1 << bits if one_sided else 1 << (bits - 1)


def abs_histograms(rows: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row histograms of ``|x|`` over ``[0, max|row|]`` (vectorized over rows).

    Returns:
        ``(counts [C, bins], amax [C])``.
    """
    a = rows.abs().double()
    amax = a.amax(1).clamp(min=1e-12)
    idx = (a / amax[:, None] * bins).floor().clamp_(0, bins - 1).long()
    counts = torch.zeros(rows.shape[0], bins, dtype=torch.float64).scatter_add_(1, idx, torch.ones_like(a))
    return counts, amax
