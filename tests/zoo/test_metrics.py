"""Fidelity metrics on hand-made cases whose answers are known."""

from __future__ import annotations

import math

import pytest
import torch

from quantune import metrics
from quantune.errors import UserInputError


def test_topk_agreement_hand_made() -> None:
    ref = torch.tensor([[3.0, 2.0, 1.0], [0.0, 5.0, 1.0], [1.0, 0.0, 2.0], [0.0, 1.0, 2.0]])
    # rows: same argmax; argmax moved to rank 2; argmax moved to rank 3; same argmax.
    cand = torch.tensor([[3.0, 2.0, 1.0], [0.0, 1.0, 5.0], [2.0, 1.0, 0.0], [0.0, 1.0, 9.0]])
    assert metrics.topk_agreement(ref, cand, 1) == pytest.approx(0.5)
    assert metrics.topk_agreement(ref, cand, 2) == pytest.approx(0.75)
    assert metrics.topk_agreement(ref, cand, 3) == pytest.approx(1.0)


def test_kl_zero_for_equal_and_known_value() -> None:
    logits = torch.randn(8, 10)
    assert metrics.mean_kl_divergence(logits, logits.clone()) == 0.0
    # Two classes, p = (0.5, 0.5), q = softmax(log 3, 0) = (0.75, 0.25):
    # KL = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) = 0.5 ln(4/3).
    ref = torch.zeros(1, 2)
    cand = torch.tensor([[math.log(3.0), 0.0]])
    assert metrics.mean_kl_divergence(ref, cand) == pytest.approx(0.5 * math.log(4.0 / 3.0), rel=1e-6)  # float32 logits
    # Shifting logits by a constant leaves the softmax unchanged.
    assert metrics.mean_kl_divergence(logits, logits + 7.0) == pytest.approx(0.0, abs=1e-12)


def test_cosine_hand_made() -> None:
    ref = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    cand = torch.tensor([[2.0, 0.0], [0.0, -1.0], [1.0, 0.0]])
    expected = (1.0 + -1.0 + 1.0 / math.sqrt(2.0)) / 3.0
    assert metrics.mean_cosine_similarity(ref, cand) == pytest.approx(expected)
    emb = torch.randn(16, 32)
    assert metrics.mean_cosine_similarity(emb, emb.clone()) == 1.0


def test_neighbour_overlap_hand_made() -> None:
    # Points on a line: 0's nearest others are 1 then 2; a permuted candidate changes that.
    ref = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.5, 0.5], [0.0, 1.0]])
    assert metrics.neighbour_overlap(ref, ref.clone(), k=2) == 1.0
    assert metrics.nearest_neighbours(ref, 1).flatten().tolist() == [1, 0, 1, 2]
    swapped = ref[[0, 3, 2, 1]].clone()  # rows 1 and 3 exchange places
    # k=3 with 4 points: every other point is a neighbour, so overlap is always 1.
    assert metrics.neighbour_overlap(ref, swapped, k=3) == 1.0
    cand_nn = metrics.nearest_neighbours(swapped, 1).flatten().tolist()
    ref_nn = metrics.nearest_neighbours(ref, 1).flatten().tolist()
    expected = sum(a == b for a, b in zip(ref_nn, cand_nn, strict=True)) / 4
    assert metrics.neighbour_overlap(ref, swapped, k=1) == pytest.approx(expected)
    assert expected < 1.0


def test_top1_accuracy_hand_made() -> None:
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert metrics.top1_accuracy(logits, torch.tensor([1, 0, 0])) == pytest.approx(2.0 / 3.0)


def test_metric_errors_are_clear() -> None:
    with pytest.raises(UserInputError, match="same inputs"):
        metrics.topk_agreement(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(UserInputError, match="k must be"):
        metrics.topk_agreement(torch.zeros(2, 3), torch.zeros(2, 3), k=4)
    with pytest.raises(UserInputError, match="k must be"):
        metrics.neighbour_overlap(torch.zeros(3, 2), torch.zeros(3, 2), k=3)
    with pytest.raises(UserInputError, match="labels"):
        metrics.top1_accuracy(torch.zeros(2, 3), torch.zeros(3))


def test_per_sample_forms_hand_made() -> None:
    ref = torch.tensor([[3.0, 2.0, 1.0], [0.0, 5.0, 1.0], [1.0, 0.0, 2.0]])
    cand = torch.tensor([[3.0, 2.0, 1.0], [0.0, 1.0, 5.0], [2.0, 1.0, 0.0]])
    assert metrics.topk_hits(ref, cand, 1).tolist() == [True, False, False]
    assert metrics.topk_hits(ref, cand, 2).tolist() == [True, True, False]
    assert metrics.top1_correct(cand, torch.tensor([0, 2, 1])).tolist() == [True, True, False]
    cos = metrics.cosine_similarities(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[2.0, 0.0], [0.0, -1.0]]))
    assert cos.tolist() == pytest.approx([1.0, -1.0])
