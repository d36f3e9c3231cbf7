from __future__ import annotations

import torch
from torch import nn

from quantune.bn_folding import find_bn_pairs, fold_batchnorm
from quantune.capture import describe_layers, find_quantizable, find_unsupported


def test_finds_layers_and_counts_macs(convnet, image_batches):
    x = image_batches[0]
    names = find_quantizable(convnet)
    assert names == ["0", "3", "6", "11"]
    infos = {i.name: i for i in describe_layers(convnet, names, lambda: convnet(x))}
    assert infos["0"].macs == 8 * 12 * 12 * 3 * 9
    assert infos["3"].depthwise and infos["3"].macs == 8 * 12 * 12 * 9
    assert not infos["6"].depthwise and infos["6"].groups == 2
    assert infos["6"].macs == 16 * 6 * 6 * 4 * 9
    assert infos["11"].kind == "linear" and infos["11"].macs == 16 * 5
    assert infos["0"].input_shape == (3, 12, 12)


def test_bn_folding_preserves_outputs(convnet, image_batches):
    x = image_batches[0]
    expected = convnet(x)
    pairs = find_bn_pairs(convnet, lambda: convnet(x))
    assert pairs == [("0", "1"), ("3", "4"), ("6", "7")]
    fold_batchnorm(convnet, pairs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in convnet.modules())
    torch.testing.assert_close(convnet(x), expected, atol=1e-5, rtol=1e-5)


class _Residual(nn.Module):
    """BN reads a sum: it must not be folded into either conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 4, 1)
        self.b = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.c = nn.Conv1d(4, 4, 1)

    def forward(self, x):
        y = self.bn(self.a(x) + self.b(x))
        return self.c(y.flatten(2))


def test_bn_reading_a_sum_is_not_folded():
    m = _Residual().eval()
    x = torch.randn(2, 4, 5, 5)
    assert find_bn_pairs(m, lambda: m(x)) == []
    assert find_quantizable(m) == ["a", "b", "c"]


def test_bn_after_an_in_place_activation_is_not_folded():
    # ReLU(inplace=True) hands the BatchNorm the conv's own tensor object, modified.
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1),
                      nn.BatchNorm2d(4)).eval()
    x = torch.randn(2, 3, 8, 8)
    assert find_bn_pairs(m, lambda: m(x)) == [("3", "4")]


def test_bn_pairs_do_not_keep_the_forward_pass_alive():
    import gc
    import weakref

    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1)).eval()
    seen: list[weakref.ref] = []
    alive: list[bool] = []
    handle = m[0].register_forward_hook(lambda mod, inp, out: seen.append(weakref.ref(out)))

    def run() -> None:
        m(torch.randn(2, 3, 8, 8))  # the output is dropped at once
        gc.collect()
        alive.append(seen[0]() is not None)

    assert find_bn_pairs(m, run) == [("0", "1")]
    handle.remove()
    assert alive == [False]  # the conv's output did not outlive its use inside the pass


def test_unsupported_layers_are_listed():
    m = nn.Sequential(nn.Conv3d(1, 2, 1), nn.Flatten(), nn.LSTM(4, 4))
    assert [t for _, t in find_unsupported(m)] == ["Conv3d", "LSTM"]


class _SamePadConv(nn.Conv2d):
    """TF-style 'same' padding done in forward: must not be swapped for a plain conv."""

    def forward(self, x):
        return super().forward(nn.functional.pad(x, (0, 1, 0, 1)))


def test_subclass_with_custom_forward_is_kept_float():
    m = nn.Sequential(_SamePadConv(3, 4, 2), nn.Conv2d(4, 4, 1))
    assert find_quantizable(m) == ["1"]
    assert find_unsupported(m) == [("0", "_SamePadConv (custom forward)")]
