"""Evaluation inputs are never used for calibration: disjoint sources, disjoint samples."""

from __future__ import annotations

import hashlib

import pytest
import torch

from quantune.zoo import sentences


def test_sentence_pools_are_disjoint_by_module_and_text() -> None:
    calib, evals = sentences.corpus()
    assert len(calib) >= 256 and len(evals) >= 1024
    assert not {m for m, _ in calib} & {m for m, _ in evals}
    assert not {s.lower() for _, s in calib} & {s.lower() for _, s in evals}
    assert all(sentences.is_calibration_module(m) for m, _ in calib)
    assert not any(sentences.is_calibration_module(m) for m, _ in evals)


def test_sentence_sampling_is_seeded_and_sized() -> None:
    _, evals = sentences.corpus()
    a = sentences.sample(evals, 50, seed=3, side="eval")
    assert a == sentences.sample(evals, 50, seed=3, side="eval")
    assert a != sentences.sample(evals, 50, seed=4, side="eval")
    assert len(set(a)) == 50
    with pytest.raises(ValueError, match="lower n_eval"):
        sentences.sample(evals, len(evals) + 1, seed=0, side="eval")


@pytest.mark.models
def test_image_sources_are_disjoint_photographs() -> None:
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    from quantune.zoo import images

    assert not set(images.CALIB_SOURCES) & set(images.EVAL_SOURCES)
    # Different names could still be the same picture (skimage has aliases such as
    # cat/chelsea): compare the pixels.
    digest = {n: hashlib.sha256(images.load_source(n).tobytes()).hexdigest() for n in images.CALIB_SOURCES + images.EVAL_SOURCES}
    assert not {digest[n] for n in images.CALIB_SOURCES} & {digest[n] for n in images.EVAL_SOURCES}


@pytest.mark.models
def test_crops_are_seeded_normalized_and_come_from_their_side() -> None:
    pytest.importorskip("skimage")
    from quantune.zoo import images

    kw = dict(size=32, mean=(0.5,) * 3, std=(0.5,) * 3, seed=0)
    x, origin = images.crops(images.EVAL_SOURCES, 20, stream=1, **kw)
    y, _ = images.crops(images.EVAL_SOURCES, 20, stream=1, **kw)
    assert x.shape == (20, 3, 32, 32) and torch.equal(x, y)
    assert set(origin) <= set(images.EVAL_SOURCES) and len(set(origin)) == len(images.EVAL_SOURCES)
    assert x.min() >= -1.0 and x.max() <= 1.0
    # Sources cycle, so crops 0 and len(EVAL_SOURCES) share a photograph but not a crop.
    assert not torch.equal(x[0], x[len(images.EVAL_SOURCES)])
