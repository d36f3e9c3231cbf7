"""Registry behaviour that needs no optional package."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from quantune import zoo
from quantune.errors import UserInputError
from quantune.zoo.deps import require
from quantune.zoo.evaluators import ClassifierFidelity, EmbeddingFidelity, LabelledAccuracy


def test_names() -> None:
    assert zoo.names() == ["example", "efficientnet-lite0", "minilm-l6"]


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(UserInputError, match="Unknown model 'resnet9'.*efficientnet-lite0.*minilm-l6"):
        zoo.get("resnet9")


def test_unknown_preset() -> None:
    with pytest.raises(UserInputError, match="preset"):
        zoo.get("minilm-l6", "huge")


def test_sizes_full_have_1000_eval_inputs() -> None:
    for name in ("efficientnet-lite0", "minilm-l6"):
        assert zoo.default_size(name, "full").n_eval >= 1000
        assert zoo.default_size(name, "quick").n_eval < zoo.default_size(name, "full").n_eval


def test_bad_size_is_user_error() -> None:
    with pytest.raises(UserInputError, match="n_eval"):
        zoo.ZooSize(n_calib=1, n_eval=0, batch_size=1)


def test_missing_package_names_the_extra() -> None:
    with pytest.raises(UserInputError, match=r"pip install 'quantune\[models\]'"):
        require("quantune_no_such_package", "no-such-package", purpose="A test")


def test_zoo_import_is_cheap() -> None:
    code = (
        "import sys, quantune, quantune.zoo; "
        "heavy = [m for m in ('transformers', 'skimage', 'sklearn', 'onnxruntime', 'torchao') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    code2 = "import sys, quantune; assert 'quantune.zoo' not in sys.modules"
    subprocess.run([sys.executable, "-c", code2], check=True)


def _tiny_batches() -> tuple[nn.Module, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8)).eval()
    return model, [torch.randn(5, 6) for _ in range(3)]


def test_fp32_copy_against_itself_is_perfect() -> None:
    import copy

    model, batches = _tiny_batches()
    twin = copy.deepcopy(model)  # a different object: really runs, no cache shortcut
    cls = ClassifierFidelity(batches, model)(twin)
    assert cls["top1_agreement"] == 1.0 and cls["top5_agreement"] == 1.0 and cls["mean_kl"] == 0.0
    emb = EmbeddingFidelity(batches, model, k=10)(twin)
    assert emb == {"mean_cosine": 1.0, "top10_overlap": 1.0}
    labelled = [(x, torch.zeros(x.shape[0], dtype=torch.long)) for x in batches]
    acc = LabelledAccuracy(labelled, model)(twin)
    assert acc["top1_agreement"] == 1.0 and 0.0 <= acc["top1_accuracy"] <= 1.0


def test_fidelity_sees_a_perturbed_model() -> None:
    import copy

    model, batches = _tiny_batches()
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[2].weight.add_(torch.randn_like(other[2].weight))
    scores = ClassifierFidelity(batches, model)(other)
    assert scores["mean_kl"] > 0.0 and scores["top1_agreement"] < 1.0


def test_per_sample_primary_metric_averages_to_the_metric() -> None:
    import copy

    model, batches = _tiny_batches()
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[2].weight.add_(torch.randn_like(other[2].weight))
    labelled = [(x, torch.randint(0, 8, (x.shape[0],))) for x in batches]
    for evaluator in (ClassifierFidelity(batches, model), EmbeddingFidelity(batches, model, k=3),
                      LabelledAccuracy(labelled, model)):
        scores, per_sample = evaluator.evaluate(other)
        assert per_sample.shape == (15,) and per_sample.dtype == torch.float64
        assert float(per_sample.mean()) == pytest.approx(scores[evaluator.primary_metric], abs=1e-6)
        assert scores == evaluator(other)
        # The reference scored against itself reuses its cached outputs: perfect fidelity.
        _, own = evaluator.evaluate(model)
        if not isinstance(evaluator, LabelledAccuracy):
            assert float(own.min()) == pytest.approx(1.0, abs=1e-12)
