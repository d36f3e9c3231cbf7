"""AdaRound: learned up/down rounding of each weight (Nagel et al., 2020).

Nearest rounding minimizes each weight's own error, not the layer's output error: the
errors of weights that see correlated inputs add up. AdaRound keeps the step sizes and
learns, per weight, whether to round down or up, minimizing the layer's output error
on calibration data (``x_q``: the layer's input in the already-rounded model, so each
layer also compensates the error of the layers before it in sequential mode).

Relaxation: code ``= floor(w / s) + h(V)`` with the rectified sigmoid
``h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)`` (``zeta = 1.1``,
``gamma = -0.1``: ``h`` reaches exactly 0 and 1 with a non-zero gradient before).
``V`` starts where ``h`` equals the fractional part, i.e. at nearest rounding's
neighbourhood. The loss is the output error plus ``reg * sum(1 - |2 h - 1| ** beta)``,
which pushes every ``h`` to 0 or 1 as ``beta`` anneals from 20 to 2 after a warm-up
without it. At the end each weight takes the side its ``h`` is closest to.

After GPTQ the weights sit on the grid, so each can only move to one side of its GPTQ
code (which side depends on the float rounding of ``w / s``): AdaRound alone beat
GPTQ + AdaRound on EfficientNet-Lite0 W4A8 (0.46 vs 0.35 top-1 agreement).

Compared with AdaQuant (:mod:`quantune.calibration.adaquant`), the weights can only
move to one of their two neighbouring grid points: far fewer degrees of freedom, so it
overfits a small calibration set much less.
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
    squared_errors,
    weighted_mse,
)
from quantune.calibration.layer_io import LayerSamples
from quantune.modules import QuantizedLayer

# Rectified sigmoid stretch (the paper's values).
ZETA, GAMMA = 1.1, -0.1
# Regularizer schedule: no rounding pressure for the first 20 % of the run, then beta
# decays linearly from 20 (only h far from 0.5 pay) to 2 (every h pays to leave 0.5).
WARMUP = 0.2
BETA_START, BETA_END = 20.0, 2.0


@dataclass(frozen=True)
class AdaRoundResult:
    """What AdaRound did to one layer.

    ``flipped``: share of the weights rounded to the other neighbour than before.
    """

    name: str
    rows: int
    iters: int
    mse_before: float
    mse_after: float
    seconds: float
    kept: bool
    flipped: float


def _rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _inverse_rectified_sigmoid(h: torch.Tensor) -> torch.Tensor:
    # h in [0, 1) maps strictly inside the sigmoid's open interval.
    p = ((h - GAMMA) / (ZETA - GAMMA)).clamp(1e-6, 1.0 - 1e-6)
    return torch.log(p / (1.0 - p))


class WeightRounding:
    """The rounding variables ``V`` of one layer and the weights they produce."""

    def __init__(self, layer: QuantizedLayer) -> None:
        w = layer.weight.detach()
        shape = [-1] + [1] * (w.dim() - 1) if layer.w_scale.dim() == 1 else []
        self.scale = layer.w_scale.detach().reshape(shape) if shape else layer.w_scale.detach()
        self.zero = layer.w_zero_point.detach().to(w.dtype)
        self.zero = self.zero.reshape(shape) if shape else self.zero
        self.lo, self.hi = layer.w_qrange
        scaled = w / self.scale
        self.floor = torch.floor(scaled)
        self.start = layer.fake_quant_weight().detach()  # what the layer computes now
        self.v = _inverse_rectified_sigmoid(scaled - self.floor).requires_grad_(True)

    def h(self) -> torch.Tensor:
        return _rectified_sigmoid(self.v)

    def _weight(self, up: torch.Tensor) -> torch.Tensor:
        code = torch.clamp(self.floor + up + self.zero, self.lo, self.hi)
        return (code - self.zero) * self.scale

    def soft_weight(self) -> torch.Tensor:
        return self._weight(self.h())

    @torch.no_grad()
    def hard_weight(self) -> torch.Tensor:
        return self._weight((self.v >= 0).to(self.floor.dtype))  # h >= 0.5 <=> v >= 0


def output_error(out: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Squared error summed over output channels (dim 1), averaged over the rest; each
    element's term multiplied by ``weight`` when given (Fisher-weighted error)."""
    return squared_errors(out, target, weight).sum(dim=1).mean()


def rounding_penalty(roundings: list[WeightRounding], progress: float, reg: float) -> torch.Tensor | float:
    """The annealed regularizer ``reg * sum(1 - |2 h - 1| ** beta)`` at ``progress`` (0..1)
    of the run: nothing during the warm-up, then ``beta`` decays from 20 to 2."""
    if progress < WARMUP or reg == 0.0:
        return 0.0
    beta = BETA_END + (BETA_START - BETA_END) * max(0.0, 1.0 - (progress - WARMUP) / (1.0 - WARMUP))
    return reg * sum((1.0 - (2.0 * r.h() - 1.0).abs().pow(beta)).sum() for r in roundings)


def annealing_progress(step: int, iters: int, start: float, deadline: float | None) -> float:
    """Share of the run done: of the steps, or of the time to ``deadline`` if larger (so
    a run cut short by the deadline still ends with annealed, decided roundings)."""
    progress = step / max(iters, 1)
    if deadline is not None:
        progress = max(progress, (time.perf_counter() - start) / max(deadline - start, 1e-9))
    return progress


@torch.no_grad()
def _mse(layer: QuantizedLayer, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
         weight: torch.Tensor | None) -> float:
    return float(weighted_mse(layer_forward(layer, x, w, layer.bias), y, weight))


def _quantized_inputs(layer: QuantizedLayer, x: torch.Tensor) -> torch.Tensor:
    """The layer's inputs on its activation grid (fixed during AdaRound: computed once)."""
    with torch.no_grad():
        return layer.fake_quant_input(x) if layer.a_qrange is not None else x


def adaround_layer(
    name: str,
    layer: QuantizedLayer,
    samples: LayerSamples,
    *,
    iters: int,
    lr: float,
    reg: float,
    batch_size: int,
    seed: int,
    deadline: float | None = None,
    holdout: float = 0.0,
) -> AdaRoundResult:
    """Learn the rounding of one layer's weights in place; revert unless the error fell.

    Args:
        name: the layer's module name (for the report).
        layer: the quantized layer; its weight is replaced by the rounded one (on the
            grid, so converting to integers reproduces the learned codes).
        samples: cached inputs and float targets.
        iters: optimizer steps. The regularizer's schedule follows the share of the
            steps done, or of the time to ``deadline`` if that is larger, so a run cut
            short by the deadline still ends with annealed, decided roundings.
        lr: Adam learning rate of the rounding logits ``V``.
        reg: weight of the rounding regularizer.
        batch_size: conv samples per step (Linear rows: ``LINEAR_ROWS_PER_SAMPLE`` x this).
        seed: seed of the minibatch draws.
        deadline: ``time.perf_counter()`` value after which no further step starts.
        holdout: share of the calibration samples kept out of the optimization; the
            error that decides whether the layer keeps its new rounding is measured on
            them (:func:`quantune.calibration.layer_batches.split_rows`).
    """
    start = time.perf_counter()
    n = len(samples)
    gen = torch.Generator().manual_seed(seed)
    x_q = _quantized_inputs(layer, samples.x)
    split = split_rows(layer, samples, holdout, gen)
    eval_idx = split.check
    rounding = WeightRounding(layer)
    check_weight = None if samples.weight is None else samples.weight[eval_idx]
    before = _mse(layer, x_q[eval_idx], samples.y[eval_idx], rounding.start, check_weight)
    bias = None if layer.bias is None else layer.bias.detach()
    opt = torch.optim.Adam([rounding.v], lr=lr)
    batches = LayerBatches(layer, x_q, samples.y, rows_for(layer, batch_size), gen, rows=split.fit,
                           weight=samples.weight)
    done = 0
    with torch.enable_grad():
        for step in range(iters):
            if deadline is not None and time.perf_counter() > deadline:
                break
            progress = annealing_progress(step, iters, start, deadline)
            x, y, weight = batches.draw_weighted()
            loss = output_error(batches.forward(x, rounding.soft_weight(), bias), y, weight)
            loss = loss + rounding_penalty([rounding], progress, reg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
    hard = rounding.hard_weight()
    after = _mse(layer, x_q[eval_idx], samples.y[eval_idx], hard, check_weight)
    kept = after < before
    # Share of weights whose code changed (grid codes of the old and the new weight).
    flipped = float((torch.round(rounding.start / rounding.scale) != torch.round(hard / rounding.scale)).float().mean())
    if kept:
        with torch.no_grad():
            layer.weight.copy_(hard)
    return AdaRoundResult(name, n, done, before, after if kept else before, time.perf_counter() - start,
                          kept, flipped if kept else 0.0)

