"""Minibatches of one layer's cached samples for layer-wise optimization, cheap on CPU.

A step of layer-wise calibration on whole feature maps is expensive: one forward and
backward pass of an early EfficientNet-Lite0 convolution over 32 images of 112x112
takes 0.3-1.2 s on one CPU core, so a time budget of seconds per layer buys tens of
steps where the methods want thousands. A convolution's output error is a mean over
output positions, so a random output *window* (the same one for every image of the
step) gives an unbiased estimate of it at a fraction of the cost: the input region that
produces the window is cut from the input (zero-padded where the window reaches past its
border, as the convolution pads), and the convolution runs on it without padding. Linear layers (rows) and small feature maps draw whole rows/samples.
AdaQuant and AdaRound both draw their steps here.

A layer keeps what the optimization found only if its error fell on *held-out*
calibration samples (:func:`split_rows`): with few samples and many weights, a result
can fit the rows it was trained on and nothing else. Holding out 25 % of 32 crops raised
EfficientNet-Lite0 W4A8 AdaRound from 0.497 to 0.523 top-1 agreement (384 crops).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from quantune.calibration.layer_io import LayerSamples
from quantune.modules import QuantizedLayer

# Output window side (positions) for conv2d minibatches: 16x16 of 112x112 is 1/49 of
# the work per image, and still spans several receptive fields.
WINDOW = 16
# Linear layers see rows (tokens), far cheaper than conv samples: this many rows count
# as one sample in step and evaluation sizes.
LINEAR_ROWS_PER_SAMPLE = 16
# Samples (conv) or sample-equivalents of rows (Linear) used to measure a layer's error.
EVAL_SAMPLES = 256
# Fewer calibration samples than this cannot spare any for a held-out check: the error
# is then measured on the training rows.
MIN_SAMPLES_TO_HOLD_OUT = 4


def rows_for(layer: QuantizedLayer, samples: int) -> int:
    """Rows of the layer's cache worth ``samples`` samples (Linear: x ``LINEAR_ROWS_PER_SAMPLE``)."""
    return samples * (LINEAR_ROWS_PER_SAMPLE if layer.kind == "linear" else 1)


def _capped(layer: QuantizedLayer, rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A seeded subset of ``rows``, at most ``EVAL_SAMPLES`` samples' worth."""
    return rows[torch.randperm(len(rows), generator=generator)[: rows_for(layer, EVAL_SAMPLES)]]


@dataclass(frozen=True)
class RowSplit:
    """Which cached rows a layer-wise method trains on and which it checks its result on.

    Attributes:
        fit: row indices the minibatches are drawn from.
        check: row indices the error before and after is measured on.
        held_out: whether ``check`` is disjoint from ``fit`` (whole samples held out).
    """

    fit: torch.Tensor
    check: torch.Tensor
    held_out: bool


def split_rows(layer: QuantizedLayer, samples: LayerSamples, holdout: float,
               generator: torch.Generator) -> RowSplit:
    """Hold out a seeded ``holdout`` share of the calibration *samples* (a sentence's tokens
    stay together: tokens of one sentence are too alike to tell fitting from overfitting).

    With ``holdout == 0``, or too few samples to spare one, every row trains and the error
    is checked on (a subset of) the training rows.
    """
    ids = samples.ids()
    unique = torch.unique(ids)
    k = round(holdout * len(unique))
    if holdout <= 0 or len(unique) < MIN_SAMPLES_TO_HOLD_OUT or k < 1:
        every = torch.arange(len(samples))
        return RowSplit(every, _capped(layer, every, generator), False)
    held = unique[torch.randperm(len(unique), generator=generator)[: min(k, len(unique) - 1)]]
    in_check = torch.isin(ids, held)
    check = torch.nonzero(in_check).flatten()
    return RowSplit(torch.nonzero(~in_check).flatten(), _capped(layer, check, generator), True)


def squared_errors(out: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Elementwise squared errors, each multiplied by ``weight`` when given."""
    err = (out - target).pow(2)
    return err if weight is None else weight * err


def weighted_mse(out: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error, each element's term multiplied by ``weight`` when given."""
    return squared_errors(out, target, weight).mean()


def layer_forward(layer: QuantizedLayer, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
                  padding: object = None) -> torch.Tensor:
    """The layer's op with explicit weight and bias on its input ``x``.

    ``padding`` overrides the layer's padding, for inputs the caller has padded already.
    """
    x = x.to(w.dtype)  # samples of a bf16 / fp16 model meet the float32 weights
    if layer.kind == "linear":
        return F.linear(x, w, b)
    conv = F.conv2d if layer.kind == "conv2d" else F.conv1d
    if padding is None:
        x, padding = layer.pad_input(x), layer.padding
    return conv(x, w, b, layer.stride, padding, layer.dilation, layer.groups)


class LayerBatches:
    """Draws ``(input, target)`` minibatches of a layer's samples and runs the layer on them.

    Args:
        layer: the quantized layer (its kind, stride, padding, dilation, groups).
        x: cached inputs ``[n, ...]`` (as the layer will see them).
        y: the float targets, row for row.
        batch: samples (conv) or rows (Linear) per minibatch.
        generator: the seeded source of every draw.
        window: output window side for conv2d (None: whole feature maps).
        rows: the row indices to draw from (None: all of them).
        weight: per-element weights of the output error, shaped like ``y`` (None: none).
    """

    def __init__(self, layer: QuantizedLayer, x: torch.Tensor, y: torch.Tensor, batch: int,
                 generator: torch.Generator, window: int | None = WINDOW, rows: torch.Tensor | None = None,
                 weight: torch.Tensor | None = None) -> None:
        self.layer = layer
        self.y = y
        self.weight = weight
        self.rows = rows
        self.n = int(x.shape[0]) if rows is None else len(rows)
        self.batch = min(self.n, batch)
        self.gen = generator
        self.x = x
        self.window: tuple[int, int] | None = None
        self.pad = (0, 0)
        pad = getattr(layer, "padding", 0)
        if (window is not None and layer.kind == "conv2d" and not isinstance(pad, str)
                and y.shape[2] * y.shape[3] > window * window):
            # Windows are cut from the input as the convolution reads it: a reflect /
            # replicate / circular padding is applied once up front (``pad`` is then 0).
            self.x = layer.pad_input(x)
            self.pad = (pad, pad) if isinstance(pad, int) else tuple(pad)
            self.window = (min(window, y.shape[2]), min(window, y.shape[3]))

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One random minibatch: whole samples/rows, or one output window of each."""
        x, y, _ = self.draw_weighted()
        return x, y

    def draw_weighted(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`draw` plus the error weights of the drawn targets (None without weights)."""
        idx = torch.randint(0, self.n, (self.batch,), generator=self.gen)
        if self.rows is not None:
            idx = self.rows[idx]
        if self.window is None:
            return self.x[idx], self.y[idx], None if self.weight is None else self.weight[idx]
        (wh, ww), (oh, ow) = self.window, self.y.shape[2:]
        i0 = int(torch.randint(0, oh - wh + 1, (1,), generator=self.gen))
        j0 = int(torch.randint(0, ow - ww + 1, (1,), generator=self.gen))
        (sh, sw), (dh, dw) = self.layer.stride, self.layer.dilation
        kh, kw = self.layer.weight.shape[2:]
        # Output rows i0 .. i0+wh-1 read padded input rows i0*s .. (i0+wh-1)*s + d*(k-1),
        # i.e. input rows shifted by -padding; what lies outside the input is zero.
        top, bottom = i0 * sh - self.pad[0], (i0 + wh - 1) * sh + dh * (kh - 1) + 1 - self.pad[0]
        left, right = j0 * sw - self.pad[1], (j0 + ww - 1) * sw + dw * (kw - 1) + 1 - self.pad[1]
        h, w = self.x.shape[2:]
        # Slice first (a view), then gather the images: only the windows are copied.
        x = self.x[:, :, max(top, 0):min(bottom, h), max(left, 0):min(right, w)][idx]
        x = F.pad(x, (max(-left, 0), max(right - w, 0), max(-top, 0), max(bottom - h, 0)))
        weight = None if self.weight is None else self.weight[:, :, i0:i0 + wh, j0:j0 + ww][idx]
        return x, self.y[:, :, i0:i0 + wh, j0:j0 + ww][idx], weight

    def forward(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        """The layer on a drawn minibatch (windows come already padded)."""
        return layer_forward(self.layer, x, w, b, padding=0 if self.window is not None else None)
