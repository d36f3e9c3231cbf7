"""Entropy calibration: the clipping threshold that minimizes KL(P || Q), as TensorRT does.

For a histogram of ``|x|`` with ``B`` bins and a candidate threshold at bin ``i``:

- ``P`` is the first ``i`` bins with all the mass beyond ``i`` added to the last bin
  (clipping moves the outliers onto the threshold);
- ``Q`` is the first ``i`` bins (without the outliers) merged into ``n_levels`` groups
  and spread back evenly over the bins of each group that are non-empty in ``P``
  (what a quantizer with ``n_levels`` levels can represent).

The best threshold balances resolution (small ``i``: fine groups) against clipping
(large outlier mass in the last bin of ``P``). This module works on a batch of
histograms ``[C, B]`` at once, so per-channel weight calibration is vectorized.
"""

from __future__ import annotations

import torch

# Penalty probability for bins that P has and Q cannot represent (TensorRT smooths
# both distributions with a similar epsilon to keep the divergence finite).
_EPS = 1e-4


def kl_divergence_per_threshold(hist: torch.Tensor, i: int, n_levels: int) -> torch.Tensor:
    """``KL(P || Q)`` of every row of ``hist`` ``[C, B]`` for the threshold at bin ``i``."""
    sliced = hist[:, :i]
    p = sliced.clone()
    p[:, -1] += hist[:, i:].sum(1)
    nonzero = p > 0
    group = torch.clamp(torch.arange(i) // max(i // n_levels, 1), max=n_levels - 1)
    q_mass = torch.zeros(hist.shape[0], n_levels, dtype=hist.dtype).index_add_(1, group, sliced)
    q_bins = torch.zeros(hist.shape[0], n_levels, dtype=hist.dtype).index_add_(1, group, nonzero.to(hist.dtype))
    q = torch.where(nonzero, q_mass[:, group] / q_bins[:, group].clamp(min=1.0), torch.zeros_like(p))
    p = p / p.sum(1, keepdim=True).clamp(min=1e-300)
    q = q / q.sum(1, keepdim=True).clamp(min=1e-300)
    q = torch.where(nonzero & (q <= 0), torch.full_like(q, _EPS), q)
    terms = torch.where(nonzero, p * torch.log(p / q.clamp(min=1e-300)), torch.zeros_like(p))
    return terms.sum(1)


def entropy_thresholds(hist: torch.Tensor, n_levels: int, max_candidates: int = 128) -> torch.Tensor:
    """Best threshold bin count (``1..B``) per row of ``hist`` ``[C, B]`` (counts of ``|x|``).

    Candidates run from ``n_levels`` bins to all ``B`` bins, strided so that at most
    ``max_candidates`` are evaluated; a single row is then refined bin by bin around
    its coarse best (the divergence curve is smooth at the stride's scale). Rows that
    are all zero get ``B``.

    Returns:
        long tensor ``[C]``; the threshold value is ``result * amax / B``.
    """
    hist = hist.double()
    n_bins = hist.shape[1]
    if n_bins <= n_levels:
        return torch.full((hist.shape[0],), n_bins, dtype=torch.long)
    stride = max(1, -(-(n_bins - n_levels) // max_candidates))
    candidates = list(range(n_levels, n_bins + 1, stride))
    if candidates[-1] != n_bins:
        candidates.append(n_bins)
    best_kl = torch.full((hist.shape[0],), float("inf"), dtype=torch.float64)
    best_i = torch.full((hist.shape[0],), n_bins, dtype=torch.long)

    def consider(i: int) -> None:
        nonlocal best_kl, best_i
        kl = kl_divergence_per_threshold(hist, i, n_levels)
        better = kl < best_kl
        best_kl = torch.where(better, kl, best_kl)
        best_i = torch.where(better, torch.full_like(best_i, i), best_i)

    for i in candidates:
        consider(i)
    if hist.shape[0] == 1 and stride > 1:
        center = int(best_i[0])
        for i in range(max(n_levels, center - stride + 1), min(n_bins, center + stride - 1) + 1):
            if i != center:
                consider(i)
    return best_i


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
