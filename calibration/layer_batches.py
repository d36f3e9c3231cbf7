"""Minibatches of one layer's cached samples for layer-wise optimization, cheap on CPU.

A step of layer-wise calibration on whole feature maps is expensive: one forward and
backward pass of an early EfficientNet-Lite0 convolution over 32 images of 112x112
takes 0.3-1.2 s on one CPU core, so a time budget of seconds per layer buys tens of
steps where the methods want thousands. A convolution's output error is a mean over
output positions, so a random output *window* (the same one for every image of the
step) gives an unbiased estimate of it at a fraction of the cost: the input region that
produces the window is cut from the zero-padded input, and the convolution runs on it
without padding. Linear layers (rows) and small feature maps draw whole rows/samples.
AdaQuant and AdaRound both draw their steps here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from quantune.modules import QuantizedLayer

# Output window side (positions) for conv2d minibatches: 16x16 of 112x112 is 1/49 of
# the work per image, and still spans several receptive fields.
WINDOW = 16


def layer_forward(layer: QuantizedLayer, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
                  padding: object = None) -> torch.Tensor:
    """The layer's op with explicit weight and bias (``padding`` overrides the layer's)."""
    if layer.kind == "linear":
        return F.linear(x, w, b)
    conv = F.conv2d if layer.kind == "conv2d" else F.conv1d
    pad = layer.padding if padding is None else padding
    return conv(x, w, b, layer.stride, pad, layer.dilation, layer.groups)


class LayerBatches:
    """Draws ``(input, target)`` minibatches of a layer's samples and runs the layer on them.

    Args:
        layer: the quantized layer (its kind, stride, padding, dilation, groups).
        x: cached inputs ``[n, ...]`` (as the layer will see them).
        y: the float targets, row for row.
        batch: samples (conv) or rows (Linear) per minibatch.
        generator: the seeded source of every draw.
        window: output window side for conv2d (None: whole feature maps).
    """

    def __init__(self, layer: QuantizedLayer, x: torch.Tensor, y: torch.Tensor, batch: int,
                 generator: torch.Generator, window: int | None = WINDOW) -> None:
        self.layer = layer
        self.y = y
        self.n = int(x.shape[0])
        self.batch = min(self.n, batch)
        self.gen = generator
        self.x = x
        self.window: tuple[int, int] | None = None
        pad = getattr(layer, "padding", 0)
        if (window is not None and layer.kind == "conv2d" and not isinstance(pad, str)
                and y.shape[2] * y.shape[3] > window * window):
            ph, pw = (pad, pad) if isinstance(pad, int) else pad
            # Zero padding once, as the convolution pads its (quantized) input with zeros.
            self.x = F.pad(x, (pw, pw, ph, ph))
            self.window = (min(window, y.shape[2]), min(window, y.shape[3]))

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One random minibatch: whole samples/rows, or one output window of each."""
        idx = torch.randint(0, self.n, (self.batch,), generator=self.gen)
        if self.window is None:
            return self.x[idx], self.y[idx]
        (wh, ww), (oh, ow) = self.window, self.y.shape[2:]
        i0 = int(torch.randint(0, oh - wh + 1, (1,), generator=self.gen))
        j0 = int(torch.randint(0, ow - ww + 1, (1,), generator=self.gen))
        (sh, sw), (dh, dw) = self.layer.stride, self.layer.dilation
        kh, kw = self.layer.weight.shape[2:]
        # Output rows i0 .. i0+wh-1 read padded input rows i0*s .. (i0+wh-1)*s + d*(k-1).
        rows = slice(i0 * sh, (i0 + wh - 1) * sh + dh * (kh - 1) + 1)
        cols = slice(j0 * sw, (j0 + ww - 1) * sw + dw * (kw - 1) + 1)
        # Slice first (a view), then gather the images: only the windows are copied.
        return self.x[:, :, rows, cols][idx], self.y[:, :, i0:i0 + wh, j0:j0 + ww][idx]

    def forward(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        """The layer on a drawn minibatch (already padded when windows are drawn)."""
        return layer_forward(self.layer, x, w, b, padding=0 if self.window is not None else None)
