"""The bundled example network: a small CNN for 8x8 handwritten digits.

It has the layer kinds quantune handles: regular and depthwise convolutions with
BatchNorm (folded at quantization), a pointwise convolution and linear layers.
"""

from __future__ import annotations

from torch import nn


def _conv_bn_relu(cin: int, cout: int, k: int, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class DigitsCNN(nn.Module):
    """1x8x8 input (pixel values scaled to [0, 1]), 10 logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(1, 32, 3),
            *_conv_bn_relu(32, 32, 3),
            nn.MaxPool2d(2),  # 4x4
            *_conv_bn_relu(32, 32, 3, groups=32),  # depthwise
            *_conv_bn_relu(32, 64, 1),  # pointwise
            nn.MaxPool2d(2),  # 2x2
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 2 * 2, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, 10),
        )

    def forward(self, x):  # noqa: D102
        return self.classifier(self.features(x))
