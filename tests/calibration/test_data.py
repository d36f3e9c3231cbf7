"""Calibration data handling: seeded subset, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantune.calibration.data import count_samples, seeded_subset
from quantune.errors import UserInputError
from quantune.prepare import prepare


def _numbered(n_batches: int, size: int) -> list[torch.Tensor]:
    return [torch.arange(i * size, (i + 1) * size).float().reshape(size, 1) for i in range(n_batches)]


def test_subset_size_determinism_and_spread():
    data = _numbered(20, 10)
    a = seeded_subset(data, 37, seed=1)
    b = seeded_subset(data, 37, seed=1)
    c = seeded_subset(data, 37, seed=2)
    ids = torch.cat(a).reshape(-1)
    assert ids.numel() == 37 and ids.unique().numel() == 37
    assert torch.equal(ids, torch.cat(b).reshape(-1))
    assert not torch.equal(ids, torch.cat(c).reshape(-1))
    assert float(ids.max()) > 100  # not just the head of the data
    assert bool((torch.diff(ids) > 0).all())  # data order kept


def test_subset_of_dict_and_tuple_batches_keeps_structure():
    data = [({"ids": torch.randint(0, 9, (4, 5 + i)), "mask": torch.ones(4, 5 + i)}, torch.zeros(4)) for i in range(5)]
    sub = seeded_subset(data, 7, seed=0)
    assert count_samples(sub) == 7
    for inputs, labels in sub:
        assert inputs["ids"].shape == inputs["mask"].shape
        assert labels.shape[0] == inputs["ids"].shape[0]


def test_subset_larger_than_data_returns_everything():
    data = _numbered(3, 4)
    assert count_samples(seeded_subset(data, 100)) == 12


def test_clear_errors():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(UserInputError, match="empty"):
        seeded_subset([], 4)
    with pytest.raises(UserInputError, match="NaN or Inf"):
        seeded_subset([torch.tensor([[float("nan"), 0.0, 0.0, 0.0]])], 4)
    with pytest.raises(UserInputError, match="expects input of shape"):
        prepare(model, [torch.randn(2, 5)])
    with pytest.raises(UserInputError, match="max_samples"):
        seeded_subset(_numbered(1, 2), 0)


def test_prepared_model_uses_the_seeded_subset():
    model = nn.Sequential(nn.Linear(1, 3))
    p = prepare(model, _numbered(10, 8))
    assert p.n_samples() == 80
    assert p.n_samples(20, seed=3) == 20
    assert p.calibration_data(20, 3) is p.calibration_data(20, 3)  # cached
