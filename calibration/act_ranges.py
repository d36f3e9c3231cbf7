"""Activation range methods: a streamed histogram + the activation spec -> ``(lo, hi)``.

Every method reads only the bounded-memory :class:`StreamingHistogram` collected once
per model, so trying another method (or another bit width) never touches the data.
"""

from __future__ import annotations

from quantune.calibration import aciq
from quantune.calibration.entropy import entropy_thresholds, levels_for, min_bins
from quantune.calibration.hist_ops import abs_histogram, mean_abs_deviation, one_sided
from quantune.calibration.histogram import StreamingHistogram
from quantune.calibration.mse import activation_mse_range
from quantune.config import ActQuant
from quantune.modules import act_qrange


def act_minmax(h: StreamingHistogram, spec: ActQuant) -> tuple[float, float]:
    """The observed extremes: no clipping, no saturation error, coarsest grid."""
    return h.min, h.max


def act_percentile(h: StreamingHistogram, spec: ActQuant) -> tuple[float, float]:
    """Clip each tail at ``spec.percentile`` (one-sided data keeps its minimum)."""
    p = float(spec.percentile) / 100.0
    if spec.symmetric:
        # One-sided on |x| would need a second histogram; clip both tails at p instead
        # and let the symmetric grid take the larger magnitude.
        return h.quantile(1.0 - p), h.quantile(p)
    lo = h.quantile(1.0 - p) if h.min < 0 else h.min
    return lo, h.quantile(p)


def act_entropy(h: StreamingHistogram, spec: ActQuant) -> tuple[float, float]:
    """KL-divergence threshold on the histogram of ``|x|`` (TensorRT's entropy calibrator).

    Non-negative data on an unsigned grid uses all ``2**bits`` levels below the
    threshold; otherwise half of them (a symmetric view of the data). The ``|x|``
    histogram has as many bins as the streamed histogram has over ``[0, max|x|]`` (finer
    bins would only interpolate, hiding the rounding error the comparison must see);
    when that is too coarse for a clipping window of
    :data:`~quantune.calibration.entropy.MIN_BINS_PER_LEVEL` bins per level, the range
    stays min/max.
    """
    n_levels = levels_for(spec.bits, one_sided(h) and not spec.symmetric)
    amax = max(abs(h.min), abs(h.max), 1e-12)
    bins = min(int(round(amax / h.bin_width)), 4 * h.bins)
    if bins <= min_bins(n_levels):
        return h.min, h.max
    counts, amax = abs_histogram(h, bins)
    i = int(entropy_thresholds(counts[None, :], n_levels)[0])
    t = i * amax / bins
    return max(h.min, -t), min(h.max, t)


def act_mse(h: StreamingHistogram, spec: ActQuant) -> tuple[float, float]:
    """The range whose quantization grid gives the lowest expected squared error."""
    qmin, qmax = act_qrange(spec)
    return activation_mse_range(h, qmin, qmax, spec.symmetric)


def act_aciq(h: StreamingHistogram, spec: ActQuant) -> tuple[float, float]:
    """Analytical clipping under a Laplace or Gaussian fit (see :mod:`quantune.calibration.aciq`).

    Non-negative data on an unsigned grid is fitted with the one-sided prior and
    clipped above only; otherwise the clip is ``mean +- alpha``. Plain ``aciq`` picks
    the prior from the data's shape (one-sided data: Laplace, typical of ReLU outputs).
    """
    forced = aciq.distribution_of(spec.method)
    if one_sided(h) and not spec.symmetric:
        dist = forced or "laplace"
        scale = aciq.one_sided_scale(dist, h.mean, h.sum_sq / max(h.count, 1))
        alpha = aciq.alpha_factor(spec.bits + 1, dist) * scale
        return 0.0, min(h.max, alpha) if alpha > 0 else h.max
    mu = h.mean
    mad = mean_abs_deviation(h, mu)
    dist = forced or aciq.choose_distribution(mad, h.std)
    alpha = aciq.alpha_factor(spec.bits, dist) * aciq.scale_parameter(dist, mad, h.std)
    if alpha <= 0:
        return h.min, h.max
    return max(h.min, mu - alpha), min(h.max, mu + alpha)
