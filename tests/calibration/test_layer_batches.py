"""Layer-wise minibatches: a conv's output window equals the same window of the full output;
held-out samples never reach the optimizer; row sample ids follow the row selection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantune.calibration.layer_batches import MIN_SAMPLES_TO_HOLD_OUT, LayerBatches, split_rows
from quantune.calibration.layer_io import LayerSamples, RowSelector, as_rows, row_sample_ids
from quantune.config import ActQuant, LayerQuantConfig, WeightQuant
from quantune.modules import QuantizedLayer

CFG = LayerQuantConfig(WeightQuant(bits=8), ActQuant(bits=8))


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation", "groups", "size"),
    [(3, 1, 1, 1, 1, 20), (3, 2, 1, 1, 4, 33), (1, 1, 0, 1, 1, 18), (5, 2, 2, 1, 8, 40), (3, 1, 2, 2, 1, 21),
     (3, (2, 1), (1, 0), 1, 1, 36)],
)
def test_windows_match_the_full_convolution(kernel, stride, padding, dilation, groups, size):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups)
    layer = QuantizedLayer(conv, CFG)
    x = torch.randn(6, 8, size, size)
    with torch.no_grad():
        y = conv(x)
    batches = LayerBatches(layer, x, y, batch=4, generator=torch.Generator().manual_seed(1), window=4)
    assert batches.window is not None
    for _ in range(60):  # enough draws to reach both borders, where zeros are padded
        xb, yb = batches.draw()
        assert yb.shape[2:] == (4, 4) and xb.shape[0] == yb.shape[0] == 4
        with torch.no_grad():
            out = batches.forward(xb, conv.weight, conv.bias)
        # The window of the full output (targets) is what the cut input produces.
        torch.testing.assert_close(out, yb, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_windows_of_a_non_zero_padding_mode_match_the_full_convolution(mode):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, padding_mode=mode)
    layer = QuantizedLayer(conv, CFG)
    x = torch.randn(3, 4, 21, 21)
    with torch.no_grad():
        y = conv(x)
    batches = LayerBatches(layer, x, y, batch=3, generator=torch.Generator().manual_seed(1), window=4)
    assert batches.window is not None
    for _ in range(40):
        xb, yb = batches.draw()
        with torch.no_grad():
            torch.testing.assert_close(batches.forward(xb, conv.weight, conv.bias), yb, rtol=1e-5, atol=1e-5)
    whole = LayerBatches(layer, x, y, batch=3, generator=torch.Generator(), window=None)
    xb, yb = whole.draw()
    with torch.no_grad():
        torch.testing.assert_close(whole.forward(xb, conv.weight, conv.bias), yb, rtol=1e-5, atol=1e-5)


def test_small_maps_linear_rows_and_string_padding_draw_whole_samples():
    torch.manual_seed(0)
    small = QuantizedLayer(nn.Conv2d(4, 4, 3, padding=1), CFG)
    x = torch.randn(5, 4, 8, 8)
    b = LayerBatches(small, x, x, batch=3, generator=torch.Generator().manual_seed(0), window=16)
    assert b.window is None and b.draw()[0].shape == (3, 4, 8, 8)
    same = QuantizedLayer(nn.Conv2d(4, 4, 3, padding="same"), CFG)
    big = torch.randn(2, 4, 40, 40)
    assert LayerBatches(same, big, big, batch=2, generator=torch.Generator(), window=16).window is None
    linear = QuantizedLayer(nn.Linear(6, 3), CFG)
    rows = torch.randn(100, 6)
    xb, yb = LayerBatches(linear, rows, rows[:, :3], batch=32, generator=torch.Generator()).draw()
    assert xb.shape == (32, 6) and yb.shape == (32, 3)
    # A batch larger than the data draws as many rows as there are.
    assert LayerBatches(linear, rows[:7], rows[:7, :3], batch=32, generator=torch.Generator()).draw()[0].shape[0] == 7


def _token_samples(sentences: int, tokens: int) -> LayerSamples:
    x = torch.randn(sentences, tokens, 6)
    rows = as_rows(x, "linear")
    return LayerSamples(rows, rows[:, :3], row_sample_ids(x, "linear", 0))


def test_row_sample_ids_group_tokens_and_follow_the_row_selection():
    x = torch.randn(3, 4, 6)
    ids = row_sample_ids(x, "linear", 10)
    assert ids.tolist() == [10] * 4 + [11] * 4 + [12] * 4
    assert row_sample_ids(torch.randn(5, 6), "linear", 0).tolist() == [0, 1, 2, 3, 4]
    assert row_sample_ids(torch.randn(6), "linear", 7).tolist() == [7]
    assert row_sample_ids(torch.randn(2, 3, 8, 8), "conv2d", 0).tolist() == [0, 1]
    # The selector draws the same rows from the ids as from the data (seeded per batch).
    sel = RowSelector(0.5, seed=3, layer_index=2)
    rows = as_rows(x, "linear")
    picked_rows, picked_ids = sel.pick(rows, 1), sel.pick(ids, 1)
    assert len(picked_rows) == len(picked_ids) == 6
    for row, sample in zip(picked_rows, picked_ids, strict=True):
        assert (rows[ids == sample] == row).all(dim=1).any()


def test_split_holds_out_whole_sentences_and_batches_never_draw_them():
    torch.manual_seed(0)
    linear = QuantizedLayer(nn.Linear(6, 3), CFG)
    samples = _token_samples(sentences=12, tokens=5)
    split = split_rows(linear, samples, 0.25, torch.Generator().manual_seed(0))
    ids = samples.ids()
    held = set(ids[split.check].tolist())
    assert split.held_out and len(held) == 3  # round(0.25 * 12) sentences
    assert set(ids[split.fit].tolist()).isdisjoint(held)
    assert len(split.fit) + len(split.check) == len(samples)  # every token of a held-out sentence
    b = LayerBatches(linear, samples.x, samples.y, batch=64, generator=torch.Generator().manual_seed(1),
                     rows=split.fit)
    fit_rows = samples.x[split.fit]
    for _ in range(20):
        xb, yb = b.draw()
        assert (xb[:, None, :] == fit_rows[None]).all(dim=2).any(dim=1).all()
        torch.testing.assert_close(yb, xb[:, :3])  # targets stay row for row


def test_split_without_holdout_or_with_too_few_samples_checks_the_training_rows():
    linear = QuantizedLayer(nn.Linear(6, 3), CFG)
    for samples, share in ((_token_samples(12, 5), 0.0), (_token_samples(MIN_SAMPLES_TO_HOLD_OUT - 1, 5), 0.5)):
        split = split_rows(linear, samples, share, torch.Generator().manual_seed(0))
        assert not split.held_out and len(split.fit) == len(samples)
        assert set(split.check.tolist()) <= set(split.fit.tolist())


def test_samples_of_mixed_image_sizes_keep_the_size_with_the_most_samples():
    from quantune.calibration.layer_io import collect_layer_samples

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)).eval()
    batches = [torch.randn(2, 3, 8, 8), torch.randn(3, 3, 10, 12), torch.randn(4, 3, 10, 12), torch.randn(4, 3, 8, 8)]
    samples = collect_layer_samples(model, model, "2", "conv2d", batches, RowSelector(1.0, 0, 0))
    assert samples is not None
    assert samples.x.shape == (7, 4, 10, 12) and samples.y.shape == (7, 4, 10, 12)
    assert samples.sample_ids.tolist() == [2, 3, 4, 5, 6, 7, 8]  # the 10x12 images, in order


def test_selector_keeps_the_budgeted_number_of_rows_on_average_and_one_at_least() -> None:
    # 13 of 64 rows in 8 batches of 8: rounding up per batch would keep 16.
    totals = []
    for seed in range(300):
        sel = RowSelector(13 / 64, seed=seed, layer_index=0)
        picks = [len(sel.pick(torch.arange(8), b)) for b in range(8)]
        assert picks[0] >= 1
        totals.append(sum(picks))
    assert abs(sum(totals) / len(totals) - 13) < 0.3, sum(totals) / len(totals)
    tiny = RowSelector(0.01, seed=0, layer_index=0)
    assert len(tiny.pick(torch.arange(8), 0)) == 1 and len(tiny.pick(torch.arange(8), 5)) == 0


class _SamplesSeen(nn.Module):
    """Counts the samples that reach it, then passes them on."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += int(x.shape[0])
        return x


def _collect_whole_batches(model, name, kind, batches, selector):
    from quantune.calibration.layer_io import _LayerCollection, _parts

    sizes = [len(b) for b in batches]
    return _LayerCollection(model, model, name, kind, batches, sizes, selector, True, False).run(
        _parts(sizes, None), select_before=False)


def test_conv_samples_are_selected_before_the_passes_and_match_selecting_after() -> None:
    from quantune.calibration.layer_io import collect_layer_samples

    torch.manual_seed(0)
    counter = _SamplesSeen()
    model = nn.Sequential(counter, nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)).eval()
    batches = [torch.randn(8, 3, 6, 6) for _ in range(6)]
    selector = RowSelector(0.25, seed=1, layer_index=3)
    samples = collect_layer_samples(model, model, "3", "conv2d", batches, selector, per_pass=3)
    seen = counter.seen
    counter.seen = 0
    reference = _collect_whole_batches(model, "3", "conv2d", batches, selector)
    assert samples is not None and reference is not None
    # Two passes (float targets, inputs) over the kept samples only, not over 48 samples each.
    assert seen == 2 * len(samples) < 2 * 48 == counter.seen
    assert torch.equal(samples.sample_ids, reference.sample_ids)
    torch.testing.assert_close(samples.x, reference.x)
    torch.testing.assert_close(samples.y, reference.y)


class _FoldIntoBatch(nn.Module):
    """``[B, 2C, H, W] -> [2B, C, H, W]``: the conv after it sees twice the model's batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.reshape(b * 2, c // 2, h, w)


def test_a_conv_whose_batch_is_not_the_samples_falls_back_to_selecting_after_the_pass() -> None:
    from quantune.calibration.layer_io import collect_layer_samples

    torch.manual_seed(0)
    model = nn.Sequential(_FoldIntoBatch(), nn.Conv2d(2, 4, 3, padding=1)).eval()
    batches = [torch.randn(4, 4, 5, 5) for _ in range(3)]
    selector = RowSelector(0.5, seed=0, layer_index=1)
    samples = collect_layer_samples(model, model, "1", "conv2d", batches, selector)
    reference = _collect_whole_batches(model, "1", "conv2d", batches, selector)
    assert samples is not None and reference is not None
    torch.testing.assert_close(samples.x, reference.x)
    assert torch.equal(samples.sample_ids, reference.sample_ids)


class _LargestBatch(nn.Module):
    """Records the largest batch that reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.largest = max(self.largest, int(x.shape[0]))
        return x


def test_linear_rows_are_collected_a_few_samples_per_pass_with_their_sample_ids() -> None:
    from quantune.calibration.layer_io import collect_layer_samples

    torch.manual_seed(0)
    probe = _LargestBatch()
    model = nn.Sequential(probe, nn.Linear(6, 5), nn.GELU(), nn.Linear(5, 3)).eval()
    batches = [torch.randn(10, 7, 6), torch.randn(3, 7, 6)]  # 13 sentences of 7 tokens
    samples = collect_layer_samples(model, model, "3", "linear", batches, RowSelector(1.0, 0, 0), per_pass=4)
    largest = probe.largest
    reference = _collect_whole_batches(model, "3", "linear", batches, RowSelector(1.0, 0, 0))
    assert samples is not None and reference is not None
    assert largest == 4 < probe.largest == 10
    torch.testing.assert_close(samples.x, reference.x)
    torch.testing.assert_close(samples.y, reference.y)
    assert torch.equal(samples.sample_ids, reference.sample_ids)
    assert torch.equal(samples.sample_ids, torch.arange(13).repeat_interleave(7))


def test_samples_per_pass_fits_the_largest_activation_in_the_budget() -> None:
    from quantune.calibration.layer_io import samples_per_pass
    from quantune.capture import LayerInfo

    def info(in_shape, out_shape):
        return LayerInfo("l", "conv2d", 1, 1, (1,), 1, 1, 1, in_shape, out_shape, False)

    big = info((96, 112, 112), (96, 112, 112))  # 4.8 MB per sample
    small = info((16, 8, 8), (32, 8, 8))
    assert samples_per_pass([small, big], budget_bytes=16 * 2**20) == 3
    assert samples_per_pass([small], budget_bytes=16 * 2**20) == 2048
    assert samples_per_pass([big], budget_bytes=2**20) == 1
