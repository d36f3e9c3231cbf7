"""Activation fusion in integer mode: found only where exact, and never changes the output."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantune.activation_fusion import SkippingReLU6
from quantune.config import QuantConfig
from quantune.prepare import quantize

pytestmark = pytest.mark.usefixtures("one_thread")


class Chain(nn.Module):
    """conv -> BN -> ReLU6 -> conv -> ReLU (inplace) -> conv -> Hardtanh(-1, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn, self.a1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6()
        self.c2, self.a2 = nn.Conv2d(8, 8, 1), nn.ReLU(inplace=True)
        self.c3, self.a3 = nn.Conv2d(8, 4, 3, padding=1), nn.Hardtanh(-1.0, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a3(self.c3(self.a2(self.c2(self.a1(self.bn(self.c1(x)))))))


class Residual(nn.Module):
    """The pre-activation output is also used by an add: fusing would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.act, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6(), nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(x)
        return self.c2(self.act(y) + y)


class SharedActivation(nn.Module):
    """One ReLU6 module used twice, with an in-place write between the two calls."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.c1(x))
        y += 10.0  # in place: the tensor is no longer clamped
        return self.act(y)


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(12, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


def _batches(shape: tuple[int, ...]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [3 * torch.randn(*shape, generator=g) for _ in range(3)]


def _integer_pair(model: nn.Module, shape: tuple[int, ...]):
    batches = _batches(shape)
    fused = quantize(model.eval(), QuantConfig(), batches, mode="integer")
    plain = quantize(model.eval(), QuantConfig(), batches, mode="integer")
    plain.fuse_activations = False
    x = batches[0]
    with torch.no_grad():
        first = fused(x)  # decides the fusion on this input (computed unfused)
        return fused, plain, first, fused(x), plain(x)


@pytest.mark.parametrize(
    ("model", "shape", "expected"),
    [
        (Chain(), (4, 3, 10, 10), {"c1": "relu6", "c2": "relu", "c3": "clamp:-1.0:2.0"}),
        (Residual(), (4, 3, 10, 10), {}),
        (SharedActivation(), (4, 3, 10, 10), {"c1": "relu6"}),
        (Functional(), (6, 12), {"fc1": "relu"}),
    ],
)
def test_fusion_is_found_only_where_exact_and_keeps_outputs(model, shape, expected) -> None:
    fused, plain, first, after, reference = _integer_pair(model, shape)
    assert fused.fused_activations == expected
    assert plain.fused_activations is None
    assert torch.allclose(first, reference, atol=1e-5)
    assert torch.allclose(after, reference, atol=1e-5)


def test_in_place_write_revokes_the_skip() -> None:
    fused, _, _, after, _ = _integer_pair(SharedActivation(), (4, 3, 10, 10))
    assert isinstance(fused.model.act, SkippingReLU6) and isinstance(fused.model.act, nn.ReLU6)
    assert after.max() <= 6.0  # the second call ran: +10 was clamped back to 6


def test_fused_model_copies_and_pickles() -> None:
    fused, _, _, after, _ = _integer_pair(Chain(), (4, 3, 10, 10))
    x = _batches((4, 3, 10, 10))[0]
    for clone in (copy.deepcopy(fused), pickle.loads(pickle.dumps(fused))):
        with torch.no_grad():
            assert torch.allclose(clone(x), after, atol=1e-5)


@pytest.mark.parametrize("model", [Chain(), SharedActivation()])
def test_inference_mode_skips_only_dedicated_activations(model) -> None:
    batches = _batches((4, 3, 10, 10))
    fused = quantize(model.eval(), QuantConfig(), batches, mode="integer")
    plain = quantize(model.eval(), QuantConfig(), batches, mode="integer")
    plain.fuse_activations = False
    with torch.inference_mode():
        fused(batches[0])
        got, want = fused(batches[1]), plain(batches[1])
    assert torch.allclose(got, want, atol=1e-5)
    dedicated = {n for n, m in fused.model.named_modules() if getattr(m, "_quantune_dedicated", False)}
    assert dedicated == ({"a1", "a2", "a3"} if isinstance(model, Chain) else set())


class SharedChain(nn.Module):
    """Three convs joined through one shared ReLU6 module (called twice per pass)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c3(self.act(self.c2(self.act(self.c1(x)))))


def _w7(model: nn.Module, chained: bool):
    from quantune.config import ActQuant, LayerQuantConfig, WeightQuant

    # 7-bit weights take the integer kernel on every CPU (no split decision to time).
    config = QuantConfig(LayerQuantConfig(WeightQuant(bits=7), ActQuant()))
    q = quantize(model.eval(), config, _batches((4, 3, 10, 10)), mode="integer")
    q.fuse_activations = chained
    return q


@pytest.mark.parametrize(
    ("model", "links"),
    [(Chain(), {"c1": "c2", "c2": "c3"}), (Residual(), {}), (SharedChain(), {"c1": "c2", "c2": "c3"})],
)
def test_chained_layers_hand_on_codes_with_the_unchained_result(model, links) -> None:
    chained, plain = _w7(model, True), _w7(model, False)
    x = _batches((4, 3, 10, 10))[1]
    with torch.no_grad():
        chained(x)
        got, want = chained(x), plain(x)
        assert chained.chains == links
        seen = {}
        hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: seen.__setitem__(n, inp[0].dtype))
                 for n, m in chained.quantized_layers().items()]
        chained(x)
        for h in hooks:
            h.remove()
    assert {n for n, d in seen.items() if d == torch.uint8} == set(links.values())
    # Codes are requantized once in the producer's epilogue instead of by the consumer:
    # the same grid, so at most one code apart (a rounding tie) and usually identical.
    assert torch.allclose(got, want, atol=1e-3, rtol=1e-3)


def test_inference_mode_keeps_only_safe_links() -> None:
    model = SharedChain()
    chained, plain = _w7(model, True), _w7(model, False)
    x = _batches((4, 3, 10, 10))[1]
    with torch.no_grad():
        chained(x)  # plan: both links pass through the shared (non-dedicated) activation
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: seen.__setitem__(n, inp[0].dtype))
             for n, m in chained.quantized_layers().items()]
    with torch.inference_mode():
        got, want = chained(x), plain(x)
    for h in hooks:
        h.remove()
    assert set(seen.values()) == {torch.float32}  # no codes without a version counter to guard the skip
    assert torch.allclose(got, want, atol=1e-3, rtol=1e-3)


class PaddedChain(nn.Module):
    """TF-style "same" stride-2 conv: conv -> Hardtanh(-1, 2) -> ZeroPad2d((0, 1, 0, 1)) -> conv."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.Hardtanh(-1.0, 2.0)
        self.pad, self.c2 = nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(8, 4, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(self.pad(self.act(self.c1(x))))


def test_codes_are_padded_with_their_zero_point() -> None:
    model = PaddedChain()
    chained, plain = _w7(model, True), _w7(model, False)
    x = _batches((4, 3, 10, 10))[1]
    with torch.no_grad():
        chained(x)
        got, want = chained(x), plain(x)
    assert chained.chains == {"c1": "c2"}
    assert chained.quantized_layers()["c2"].a_zero_point != 0  # a zero-padded code would be wrong
    assert torch.allclose(got, want, atol=1e-3, rtol=1e-3)


def test_no_chain_into_a_smoothed_consumer() -> None:
    from quantune.config import ActQuant, LayerQuantConfig, WeightQuant

    config = QuantConfig(LayerQuantConfig(WeightQuant(bits=7), ActQuant(smoothing=0.5)))
    batches, model = _batches((4, 3, 10, 10)), Chain().eval()
    q = quantize(model, config, batches, mode="integer")
    plain = quantize(model, config, batches, mode="integer")
    plain.fuse_activations = False
    with torch.no_grad():
        q(batches[1])
        got, want = q(batches[1]), plain(batches[1])
    assert q.chains == {}  # the producer cannot requantize to a per-channel-divided grid
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
