"""torch.export programs: rebuilt into named modules, quantized, saved and loaded without pickles."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quantune
from quantune.errors import UserInputError
from quantune.exported import modules_from_exported


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 4, padding="same", groups=8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.shared = nn.Linear(8, 8)
        self.fc = nn.Linear(8, 5, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.c1(x)))
        t = self.dw(x).flatten(2).transpose(1, 2)
        t = self.attn(t, t, t)[0]
        return self.fc(self.shared(self.shared(t)).mean(1))


def _program(batch: int | None = None) -> tuple[nn.Module, torch.export.ExportedProgram]:
    torch.manual_seed(0)
    model = _Net().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    dynamic = None if batch else ({0: torch.export.Dim("batch", min=1, max=256)},)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (torch.randn(batch or 4, 3, 10, 10),), dynamic_shapes=dynamic)
    return model, program


def test_exported_calls_become_named_modules_that_compute_the_same() -> None:
    model, program = _program()
    rebuilt = modules_from_exported(program.module())
    kinds = {n: type(m).__name__ for n, m in rebuilt.named_modules()}
    assert kinds["c1"] == "Conv2d" and kinds["bn"] == "BatchNorm2d" and kinds["dw"] == "Conv2d"
    assert kinds["attn.in_proj"] == kinds["attn.out_proj"] == kinds["shared"] == kinds["fc"] == "Linear"
    assert rebuilt.dw.padding == "same" and rebuilt.dw.groups == 8 and rebuilt.fc.bias is None
    rebuilt.eval()  # the exported module's own class refuses eval()
    x = torch.randn(3, 3, 10, 10)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_exported_model_quantizes_folds_and_round_trips_without_pickles(tmp_path) -> None:
    model, program = _program()
    file = tmp_path / "model.pt2"
    torch.export.save(program, file)
    rebuilt = modules_from_exported(torch.export.load(str(file)).module())
    data = [torch.randn(4, 3, 10, 10) for _ in range(3)]
    q = quantune.quantize(rebuilt, None, data)
    assert ("c1", "bn") in q.bn_pairs
    assert {"c1", "dw", "attn.in_proj", "attn.out_proj", "shared", "fc"} <= set(q.quantized_layers())
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        expected = q(x)
        assert F.cosine_similarity(expected.flatten(), model(x).flatten(), dim=0) > 0.99
    quantune.save(q, tmp_path / "art", exported_program=file)
    assert not (tmp_path / "art" / "module.pt").exists()
    with torch.no_grad():
        assert torch.equal(quantune.load(tmp_path / "art")(x), expected)


def test_static_shapes_give_an_error_that_says_how_to_export() -> None:
    _, program = _program(batch=2)
    rebuilt = modules_from_exported(program.module())
    with pytest.raises(UserInputError, match="dynamic_shapes"):
        quantune.quantize(rebuilt, None, [torch.randn(4, 3, 10, 10)])


def test_unpicklable_model_is_saved_without_module_and_a_warning(tmp_path, convnet, image_batches) -> None:
    q = quantune.quantize(convnet, None, image_batches)
    q.model.unpicklable = lambda: None  # a local function: pickle refuses it
    with pytest.warns(UserWarning, match="cannot be pickled"):
        quantune.save(q, tmp_path / "art")
    assert not (tmp_path / "art" / "module.pt").exists() and (tmp_path / "art" / "state.pt").exists()
