"""The bundled example through the registry (no optional package needed)."""

from __future__ import annotations

import copy

import torch

from quantune import zoo


def test_example_entry_scores_labelled_accuracy() -> None:
    entry = zoo.get("example", n_calib=64, n_eval=128, batch_size=32)
    assert entry.primary_metric == "top1_accuracy"
    assert sum(x.shape[0] for x in entry.calib_batches) == 64
    assert sum(x.shape[0] for x, _ in entry.eval_batches) == 128
    scores = entry.evaluate(copy.deepcopy(entry.model))
    assert scores["top1_agreement"] == 1.0
    assert scores["top1_accuracy"] > 0.9  # the shipped digits CNN is ~99% accurate


def test_example_calibration_is_not_evaluation() -> None:
    entry = zoo.get("example", "quick")
    calib = torch.cat(entry.calib_batches)
    evals = torch.cat([x for x, _ in entry.eval_batches])
    # No evaluation image appears among the calibration images.
    flat_c = {tuple(v.flatten().tolist()) for v in calib}
    assert not any(tuple(v.flatten().tolist()) in flat_c for v in evals)
