"""Calibration data for the many-pass steps: kept in memory within the budget, replayed
beyond it, checked at every replay, and giving the same calibration either way."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

from quantune.calibration.replay import ChainedBatches, ReplayedBatches, batch_sizes, batches_within
from quantune.config import (
    ActQuant,
    CalibrationProcedure,
    LayerQuantConfig,
    QuantConfig,
    WeightQuant,
)
from quantune.errors import UserInputError
from quantune.prepare import PreparedModel


class Regenerated:
    """Re-iterable source that makes its batches anew at every pass (a loader reading files)."""

    def __init__(self, sizes: list[int], shuffle: bool = False) -> None:
        self.sizes = sizes
        self.shuffle = shuffle
        self.passes = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        self.passes += 1
        order = list(range(len(self.sizes)))
        if self.shuffle:
            order = torch.randperm(len(order), generator=torch.Generator().manual_seed(self.passes)).tolist()
        for i in order:
            yield torch.randn(self.sizes[i], 3, 8, 8, generator=torch.Generator().manual_seed(i))


def test_lists_stay_and_a_source_within_the_budget_is_read_once_into_a_list() -> None:
    data = [torch.randn(2, 3)]
    assert batches_within(data, 0) is data
    source = Regenerated([4, 4, 2])
    kept = batches_within(source, 10 * 4 * 3 * 8 * 8)  # exactly the source's bytes
    assert isinstance(kept, list) and [len(b) for b in kept] == [4, 4, 2] and source.passes == 1


def test_a_source_over_the_budget_is_replayed_and_holds_no_batch() -> None:
    source = Regenerated([4, 4, 2])
    replayed = batches_within(source, 1000)
    assert isinstance(replayed, ReplayedBatches)
    assert len(replayed) == 3 and batch_sizes(replayed) == [4, 4, 2]
    torch.testing.assert_close(replayed[1], torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)))
    assert [len(b) for b in replayed[:2]] == [4, 4] and replayed[-1].shape[0] == 2
    refs = [weakref.ref(b) for b in replayed]
    gc.collect()
    assert all(r() is None for r in refs)  # nothing kept between passes
    chained = replayed + [torch.zeros(5, 3, 8, 8)]
    assert isinstance(chained, ChainedBatches) and len(chained) == 4 and batch_sizes(chained) == [4, 4, 2, 5]


def test_a_source_that_changes_between_passes_is_refused_with_what_to_do() -> None:
    replayed = batches_within(Regenerated([2, 2, 2, 2], shuffle=True), 100)
    with pytest.raises(UserInputError, match="shuffle=False"):
        list(replayed)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()


@pytest.mark.parametrize("steps", [{"adaquant": True, "adaquant_iters": 20}, {"gptq": True, "bias_correction": True}])
def test_replayed_data_calibrates_exactly_like_data_held_in_memory(steps: dict) -> None:
    config = QuantConfig(default=LayerQuantConfig(WeightQuant(bits=4), ActQuant(bits=8)),
                         procedure=CalibrationProcedure(**steps, adaquant_cache_mb=1))
    probe = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(99))
    outputs = []
    for cache_mb in (0, 64):  # replayed, held in memory
        source = Regenerated([8, 8, 8, 5])
        prepared = PreparedModel(_model(), source, data_cache_mb=cache_mb)
        kind = type(prepared.pass_batches())
        assert (kind is ReplayedBatches) == (cache_mb == 0)
        with torch.no_grad():
            outputs.append(prepared.quantize(config, mode="simulate").model(probe))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


def test_chained_batches_index_like_a_list() -> None:
    replayed = batches_within(Regenerated([4, 4, 2]), 100)
    extra = [torch.zeros(5, 3, 8, 8), torch.ones(1, 3, 8, 8)]
    chained = replayed + extra
    whole = [*list(replayed), *extra]
    for index in (0, 3, -1, -5):
        torch.testing.assert_close(chained[index], whole[index])
    assert [b.shape[0] for b in chained[1:4]] == [4, 2, 5] and chained[7:] == []
    with pytest.raises(IndexError):
        chained[5]


class Shrinking(Regenerated):
    """Gives one batch fewer at every pass after the first."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        self.passes += 1
        for i in range(len(self.sizes) - (self.passes > 1)):
            yield torch.randn(self.sizes[i], 3, 8, 8, generator=torch.Generator().manual_seed(i))


def test_a_source_that_gives_fewer_batches_on_a_replay_is_refused() -> None:
    replayed = batches_within(Shrinking([2, 2, 2]), 100)
    with pytest.raises(UserInputError, match="gave 2 batches in this pass and 3"):
        list(replayed)
