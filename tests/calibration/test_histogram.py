"""Streaming histogram: bounded memory, merge, quantiles; per-channel maxima of the statistics pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantune.calibration.collect import collect_input_stats
from quantune.calibration.hist_ops import abs_histogram, cdf
from quantune.calibration.histogram import StreamingHistogram


def _state_bytes(h: StreamingHistogram) -> int:
    return sum(v.numel() * v.element_size() for v in h.__dict__.values() if torch.is_tensor(v))


def test_memory_does_not_grow_with_samples():
    h = StreamingHistogram(bins=512)
    h.update(torch.randn(1000))
    size = _state_bytes(h)
    for i in range(200):  # growing range forces re-binning too
        h.update(torch.randn(5000) * (1 + i / 20))
    assert _state_bytes(h) == size
    assert h.counts.numel() == 512
    assert h.count == 1000 + 200 * 5000


def test_merge_equals_single_stream():
    torch.manual_seed(0)
    parts = [torch.randn(20000) * (i + 1) for i in range(4)]
    single, merged = StreamingHistogram(), StreamingHistogram()
    for p in parts:
        single.update(p)
    for p in parts:
        other = StreamingHistogram()
        other.update(p)
        merged.merge(other)
    assert merged.count == single.count
    assert (merged.min, merged.max) == (single.min, single.max)
    for q in (0.01, 0.5, 0.99):
        assert abs(merged.quantile(q) - single.quantile(q)) < 4 * merged.bin_width


def test_percentile_matches_torch_quantile_within_a_bin():
    torch.manual_seed(1)
    x = torch.distributions.StudentT(3.0).sample((100000,))
    # 2048 bins: with much finer bins the sparse tails hold a few samples per bin and
    # the within-bin interpolation error is the gap between samples, not the bin.
    h = StreamingHistogram(bins=2048)
    for c in x.chunk(7):
        h.update(c)
    for q in (0.001, 0.1, 0.5, 0.9, 0.999, 0.9999):
        assert abs(h.quantile(q) - float(torch.quantile(x, q))) <= h.bin_width


def test_abs_histogram_keeps_mass_and_cdf_is_monotone():
    h = StreamingHistogram()
    h.update(torch.randn(10000) - 0.5)
    counts, amax = abs_histogram(h, 256)
    assert abs(float(counts.sum()) - h.count) < 1e-6 * h.count
    assert amax == max(abs(h.min), abs(h.max))
    grid = torch.linspace(h.lo, h.hi, 50, dtype=torch.float64)
    assert bool((torch.diff(cdf(h, grid)) >= 0).all())


@pytest.mark.parametrize("channels_last", [False, True])
def test_collected_conv_channel_maxima_are_per_input_channel_over_batch_and_positions(channels_last: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 5, 3)).eval()
    batches = [torch.randn(4, 3, 9, 7) * torch.tensor([1.0, 10.0, 0.1]).view(1, 3, 1, 1) for _ in range(3)]
    if channels_last:
        batches = [b.to(memory_format=torch.channels_last) for b in batches]
    collected = collect_input_stats(conv, ["0"], batches)
    expected = torch.cat(batches).abs().amax(dim=(0, 2, 3))
    torch.testing.assert_close(collected.channel_absmax["0"], expected)
