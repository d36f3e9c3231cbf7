"""AdaQuant: layer-wise calibration of weights, bias and step sizes (Hubara et al., 2021).

For each quantized layer, minimize ``||layer_float(x_float) - layer_q(x_q)||^2`` over
the layer's continuous weight (quantized in the forward pass through the
straight-through estimator), its bias, its weight step sizes and its input step size.
In sequential mode ``x_q`` is the layer's input in the model whose earlier layers are
already calibrated, so each layer also corrects the error accumulated before it.

Parameterization (why: Adam's step is ~``lr`` in the units of each parameter, so every
parameter is expressed in units where ``lr`` means the same thing on every layer):

- weight ``w = w0 + s0 * d``: ``d`` in units of the initial quantization step;
- step sizes ``s = s0 * exp(r)``: ``r`` is a relative (log) change;
- bias ``b = b0 + std(y) * e``: ``e`` relative to the spread of the layer's output.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from quantune.calibration.layer_batches import (
    LayerBatches,
    layer_forward,
    rows_for,
    split_rows,
    weighted_mse,
)
from quantune.calibration.layer_io import LayerSamples
from quantune.modules import QuantizedLayer
from quantune.quantizer import fake_quantize

# Step sizes and bias move 10x slower than weights: they act on every output at once.
_SCALE_LR_FACTOR = 0.1
# Straight-through gradients do not descend the true (piecewise constant) loss: weights
# near a rounding boundary oscillate and the error can rise again after a good start.
# The error is measured this many times during the run and the best iterate is kept.
_CHECKPOINTS = 10


@dataclass(frozen=True)
class AdaQuantResult:
    """What AdaQuant did to one layer."""

    name: str
    rows: int
    iters: int
    mse_before: float
    mse_after: float
    seconds: float
    kept: bool


class _Trainable:
    """The free parameters of one layer and how they map back to its tensors."""

    def __init__(self, layer: QuantizedLayer, y_std: float) -> None:
        self.layer = layer
        self.w0 = layer.weight.detach().clone()
        self.s0 = layer.w_scale.detach().clone()
        self.a0 = layer.a_scale.detach().clone()
        self.b0 = layer.bias.detach().clone() if layer.bias is not None else torch.zeros(self.w0.shape[0])
        self.y_std = max(y_std, 1e-8)
        self.d = torch.zeros_like(self.w0, requires_grad=True)
        self.r_w = torch.zeros_like(self.s0, requires_grad=True)
        self.r_a = torch.zeros_like(self.a0, requires_grad=True)
        self.e = torch.zeros_like(self.b0, requires_grad=True)
        self.axis = 0 if self.s0.dim() == 1 else None

    def _w_step(self) -> torch.Tensor:
        return self.s0.reshape(-1, *([1] * (self.w0.dim() - 1))) if self.axis == 0 else self.s0

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Current ``(weight, w_scale, a_scale, bias)`` as differentiable tensors."""
        w = self.w0 + self._w_step() * self.d
        return w, self.s0 * torch.exp(self.r_w), self.a0 * torch.exp(self.r_a), self.b0 + self.y_std * self.e

    def output(self, x: torch.Tensor, batches: LayerBatches | None = None) -> torch.Tensor:
        """The layer's output on ``x`` (a minibatch drawn from ``batches``, if given)."""
        layer = self.layer
        w, s_w, s_a, b = self.tensors()
        x = layer.smooth_input(x)  # cached inputs are as the layer receives them
        if layer.a_qrange is not None:
            lo, hi = layer.a_qrange
            x = fake_quantize(x, s_a, layer.a_zero_point, lo, hi)
        wlo, whi = layer.w_qrange
        w_q = fake_quantize(w, s_w, layer.w_zero_point, wlo, whi, self.axis)
        return layer_forward(layer, x, w_q, b) if batches is None else batches.forward(x, w_q, b)

    def param_groups(self, lr: float) -> list[dict[str, object]]:
        slow = [self.r_w, self.e] + ([self.r_a] if self.layer.a_qrange is not None else [])
        return [{"params": [self.d], "lr": lr}, {"params": slow, "lr": lr * _SCALE_LR_FACTOR}]

    def state(self) -> list[torch.Tensor]:
        return [t.detach().clone() for t in (self.d, self.r_w, self.r_a, self.e)]

    @torch.no_grad()
    def load(self, state: list[torch.Tensor]) -> None:
        for t, v in zip((self.d, self.r_w, self.r_a, self.e), state, strict=True):
            t.copy_(v)

    @torch.no_grad()
    def write_back(self) -> None:
        w, s_w, s_a, b = self.tensors()
        layer = self.layer
        layer.weight.copy_(w)
        layer.w_scale.copy_(s_w)
        layer.a_scale.copy_(s_a)
        if layer.bias is None:
            layer.bias = torch.nn.Parameter(b.clone())
        else:
            layer.bias.copy_(b)


@torch.no_grad()
def _mse(train: _Trainable, samples: LayerSamples, idx: torch.Tensor) -> float:
    out = train.output(samples.x[idx])
    return float(weighted_mse(out, samples.y[idx], None if samples.weight is None else samples.weight[idx]))


def adaquant_layer(
    name: str,
    layer: QuantizedLayer,
    samples: LayerSamples,
    *,
    iters: int,
    lr: float,
    batch_size: int,
    seed: int,
    deadline: float | None = None,
    holdout: float = 0.0,
) -> AdaQuantResult:
    """Calibrate one layer in place on its cached ``samples``; revert if it got worse.

    Args:
        name: the layer's module name (for the report).
        layer: the quantized layer (simulate-mode parameters are updated).
        samples: cached inputs and float targets.
        iters: maximum optimizer steps.
        lr: Adam learning rate (weights, in units of the initial step size).
        batch_size: conv samples per step (Linear rows: ``LINEAR_ROWS_PER_SAMPLE`` x this).
        seed: seed of the minibatch draws.
        deadline: ``time.perf_counter()`` value after which no further step starts.
        holdout: share of the calibration samples kept out of the optimization; the best
            iterate (and whether the layer keeps it) is chosen by the error on them.
    """
    start = time.perf_counter()
    n = len(samples)
    gen = torch.Generator().manual_seed(seed)
    split = split_rows(layer, samples, holdout, gen)
    eval_idx = split.check
    train = _Trainable(layer, float(samples.y.float().std()))
    before = best = _mse(train, samples, eval_idx)
    best_state = train.state()
    opt = torch.optim.Adam(train.param_groups(lr))
    batches = LayerBatches(layer, samples.x, samples.y, rows_for(layer, batch_size), gen, rows=split.fit,
                           weight=samples.weight)
    check_every = max(1, iters // _CHECKPOINTS)
    done = 0
    with torch.enable_grad():
        for step in range(iters):
            if deadline is not None and time.perf_counter() > deadline:
                break
            x, y, weight = batches.draw_weighted()
            loss = weighted_mse(train.output(x, batches), y, weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if (step + 1) % check_every == 0 or step + 1 == iters:
                err = _mse(train, samples, eval_idx)
                if err < best:
                    best, best_state = err, train.state()
    kept = best < before
    if kept:
        train.load(best_state)
        train.write_back()
    return AdaQuantResult(name, n, done, before, best, time.perf_counter() - start, kept)
