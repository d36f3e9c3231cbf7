"""GELU in the integer epilogue: fused only where the skipping module is certain to run,
consumed once, chained into the next layer, and never a change of the output."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantune.activation_fusion import SkippingActivation, SkippingGELU
from quantune.config import ActQuant, LayerQuantConfig, QuantConfig, WeightQuant
from quantune.kernels.epilogue import Epilogue, apply_activation, clamp_bounds
from quantune.prepare import quantize

pytestmark = pytest.mark.usefixtures("one_thread")


class HFStyleGELU(nn.Module):
    """A foreign activation module (like transformers' ``GELUActivation``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)


class MLP(nn.Module):
    """Transformer MLP: fc1 -> act -> fc2."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(12, 32), act, nn.Linear(32, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class FunctionalGELU(MLP):
    """GELU called in the parent's forward: nothing can skip it, so no fusion."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SharedGELU(nn.Module):
    """One GELU module called twice per pass (not dedicated): no fusion."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(12, 32), nn.Linear(32, 6), nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc2(self.act(self.fc1(x))))


class DoubleGELU(nn.Module):
    """GELU applied twice in a row: the second must compute (the mark is consumed)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.a1, self.a2, self.fc2 = nn.Linear(12, 32), nn.GELU(), nn.GELU(), nn.Linear(32, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.a2(self.a1(self.fc1(x))))


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [2 * torch.randn(16, 12, generator=g) for _ in range(3)]


def _pair(model: nn.Module, bits: int = 7):
    # 7-bit weights take the integer kernel on every CPU (no timed path decision).
    config = QuantConfig(LayerQuantConfig(WeightQuant(bits=bits), ActQuant()))
    fused = quantize(model.eval(), config, _batches(), mode="integer")
    plain = quantize(model.eval(), config, _batches(), mode="integer")
    plain.fuse_activations = False
    return fused, plain


@pytest.mark.parametrize(
    ("model", "fused_layers", "links", "skipper"),
    [
        (MLP(nn.GELU()), {"fc1": "gelu"}, {"fc1": "fc2"}, SkippingGELU),
        (MLP(nn.GELU(approximate="tanh")), {"fc1": "gelu_tanh"}, {"fc1": "fc2"}, SkippingGELU),
        (MLP(HFStyleGELU()), {"fc1": "gelu"}, {"fc1": "fc2"}, SkippingActivation),
        (FunctionalGELU(nn.Identity()), {}, {}, None),
        (SharedGELU(), {}, {}, None),
        (DoubleGELU(), {"fc1": "gelu"}, {}, None),
    ],
)
def test_gelu_fuses_only_where_a_module_will_skip_and_keeps_outputs(model, fused_layers, links, skipper) -> None:
    fused, plain = _pair(model)
    x = _batches()[1]
    with torch.no_grad():
        first = fused(x)  # plans the fusion on this input (computed unfused)
        got, want = fused(x), plain(x)
    assert fused.fused_activations == fused_layers
    assert fused.chains == links
    if skipper is not None:
        assert isinstance(fused.model.act, skipper)
    # Chained codes are requantized once by the producer: at most a rounding tie apart.
    torch.testing.assert_close(first, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def test_wrapped_activation_copies_pickles_and_replans() -> None:
    fused, plain = _pair(MLP(HFStyleGELU()))
    x = _batches()[2]
    with torch.no_grad():
        fused(x)
        after, want = fused(x), plain(x)
        for clone in (copy.deepcopy(fused), pickle.loads(pickle.dumps(fused))):
            torch.testing.assert_close(clone(x), after)
        fused.set_backend("auto")  # re-plans on the next call: the wrapper is not wrapped again
        fused(x)
        torch.testing.assert_close(fused(x), want, rtol=1e-3, atol=1e-3)
    assert isinstance(fused.model.act, SkippingActivation)
    assert not isinstance(fused.model.act.inner, SkippingActivation)


def test_inference_mode_keeps_gelu_exact() -> None:
    fused, plain = _pair(MLP(nn.GELU()))
    x = _batches()[1]
    with torch.inference_mode():
        fused(x)
        got, want = fused(x), plain(x)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def test_epilogue_activation_names() -> None:
    y = torch.linspace(-3, 3, 13)
    torch.testing.assert_close(apply_activation(y, "gelu"), F.gelu(y))
    torch.testing.assert_close(apply_activation(y, "gelu_tanh"), F.gelu(y, approximate="tanh"))
    assert clamp_bounds("gelu") is None and clamp_bounds("clamp:-1:2") == (-1.0, 2.0)
    for bad in ("swish", "clamp:2:1", "clamp:a:b", "gelu:none"):
        with pytest.raises(ValueError, match="Unknown epilogue activation"):
            Epilogue(bad)
