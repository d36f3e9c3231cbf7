"""Synthetic calibration inputs distilled from a model's own BatchNorm statistics.

A BatchNorm layer's running mean and variance summarize what the layer saw during
training. Inputs optimized so that every BatchNorm's batch statistics match them
(ZeroQ, Cai et al. 2020; DeepInversion, Yin et al. 2020) cover the training
distribution in a way a handful of user photographs cannot. Layer-wise calibration
(AdaRound, AdaQuant) fitted on a few photographs learns roundings that suit those
photographs: on EfficientNet-Lite0 W4A8 it keeps 0.90 top-1 agreement on new crops of
the calibration photographs but 0.45 on other photographs. Adding distilled inputs to
its training set is what :attr:`CalibrationProcedure.synthetic_samples` does.

The model handed in has its BatchNorms folded into the preceding layers (as
:class:`quantune.prepare.PreparedModel` keeps it), so the matching runs on the folded
layers' outputs: BatchNorm maps a channel of mean ``mu`` and standard deviation
``sigma`` to mean ``beta`` and standard deviation ``|gamma| * sigma / sqrt(var + eps)``,
which become the targets there. Unfolded BatchNorms are matched on their inputs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from quantune.batches import model_inputs
from quantune.errors import UserInputError
from quantune.progress import progress_bar

#: A channel whose target standard deviation is below this share of the layer's median
#: is treated as having this one: dead channels (running variance 0) would otherwise
#: divide by zero and dominate the loss.
_MIN_RELATIVE_STD = 1e-2
#: Spatial jitter (pixels, each way) and horizontal flips between steps keep the inputs
#: from fitting the statistics with pixel-aligned artefacts (DeepInversion's priors).
_JITTER = 8


@dataclass(frozen=True)
class ChannelTarget:
    """Where to observe a channel-wise statistic and what it should be."""

    module: str
    on_input: bool  # True: the module's input (an unfolded BatchNorm); False: its output
    mean: torch.Tensor
    std: torch.Tensor


@dataclass(frozen=True)
class SynthesisReport:
    """What one synthesis did."""

    samples: int
    iters: int
    targets: int
    loss_start: float
    loss_end: float
    seconds: float


def batchnorm_targets(model: nn.Module, bn_pairs: list[tuple[str, str]],
                      folded_bns: dict[str, nn.Module]) -> list[ChannelTarget]:
    """Per-channel statistic targets from the BatchNorms of ``model``.

    Args:
        model: the model the inputs are optimized through (BatchNorms folded or not).
        bn_pairs: ``(layer, batchnorm)`` pairs already folded into ``layer``.
        folded_bns: the folded BatchNorm modules (with their running statistics) by name.
    """
    targets: list[ChannelTarget] = []
    for layer, bn_name in bn_pairs:
        bn = folded_bns[bn_name]
        sigma = bn.running_var.sqrt()
        gamma = bn.weight if bn.weight is not None else torch.ones_like(sigma)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(sigma)
        std = gamma.abs() * sigma / (bn.running_var + bn.eps).sqrt()
        targets.append(ChannelTarget(layer, False, beta.detach().float(), std.detach().float()))
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_var is not None:
            targets.append(ChannelTarget(name, True, module.running_mean.detach().float(),
                                         module.running_var.sqrt().detach().float()))
    return targets


def _channel_moments(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dims = [d for d in range(t.dim()) if d != 1]
    return t.mean(dims), t.var(dims, unbiased=False).add(1e-12).sqrt()


def _mismatch(t: torch.Tensor, target: ChannelTarget) -> torch.Tensor:
    """Mean over channels of ``((m - mu) / s)^2 + (std / s - 1)^2``: scale-free, so every
    layer weighs the same whatever its units."""
    mean, std = _channel_moments(t)
    s = target.std.clamp_min(_MIN_RELATIVE_STD * float(target.std.median().clamp_min(1e-12)))
    return (((mean - target.mean) / s) ** 2 + (std / s - 1.0) ** 2).mean()


def _image_like(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.shape[2] > 2 * _JITTER and x.shape[3] > 2 * _JITTER


def synthesize(
    model: nn.Module,
    targets: list[ChannelTarget],
    example: Any,
    n: int,
    *,
    iters: int = 200,
    lr: float = 0.1,
    batch_size: int = 32,
    seed: int = 0,
    show_progress: bool = False,
) -> tuple[list[torch.Tensor], SynthesisReport]:
    """``n`` inputs shaped like ``example``'s whose BatchNorm statistics match ``targets``.

    The inputs start as Gaussian noise with the per-channel mean and spread of the real
    ``example`` batch and stay inside its per-channel value range (a normalized image
    never leaves the range its preprocessing allows). Adam with a cosine schedule.

    Returns:
        ``(batches, report)``: batches of at most ``batch_size`` inputs.

    Raises:
        UserInputError: no target, or inputs that are not a float tensor (token ids
            cannot be optimized).
    """
    if not targets:
        raise UserInputError("Synthetic calibration data is distilled from BatchNorm statistics, and this model "
                             "has no BatchNorm layer; calibrate it with real data only (synthetic_samples=0).")
    x0 = model_inputs(example)
    if not (torch.is_tensor(x0) and x0.is_floating_point() and x0.dim() >= 2):
        raise UserInputError("Synthetic calibration data needs a model whose input is one float tensor (images); "
                             f"this model takes {type(x0).__name__} inputs. Use synthetic_samples=0.")
    x0 = x0.detach().float()
    dims = [d for d in range(x0.dim()) if d != 1]
    shape = [1] * x0.dim()
    shape[1] = -1
    mean, std = x0.mean(dims).reshape(shape), x0.std(dims).reshape(shape).clamp_min(1e-6)
    lo, hi = x0.amin(dims).reshape(shape), x0.amax(dims).reshape(shape)
    modules = dict(model.named_modules())
    gen = torch.Generator().manual_seed(seed)
    with _out_of_place(model):
        return _distill(model, modules, targets, (mean, std, lo, hi), x0.shape[1:], n, iters, lr, batch_size,
                        gen, show_progress)


@contextmanager
def _out_of_place(model: nn.Module) -> Iterator[None]:
    """Activations computed out of place meanwhile: ``ReLU(inplace=True)`` overwrites a
    tensor autograd needs for the input gradient."""
    flagged = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    for m in flagged:
        m.inplace = False
    try:
        yield
    finally:
        for m in flagged:
            m.inplace = True


def _distill(model: nn.Module, modules: dict[str, nn.Module], targets: list[ChannelTarget],
             moments: tuple[torch.Tensor, ...], sample_shape: torch.Size, n: int, iters: int, lr: float,
             batch_size: int, gen: torch.Generator, show_progress: bool
             ) -> tuple[list[torch.Tensor], SynthesisReport]:
    mean, std, lo, hi = moments
    batches: list[torch.Tensor] = []
    losses: list[float] = []
    first: float | None = None
    start = time.perf_counter()
    n_batches = math.ceil(n / batch_size)
    bar = progress_bar(total=n_batches * iters, desc="synthetic calibration data", unit="step", enable=show_progress)
    with bar:
        for b in range(n_batches):
            m = min(batch_size, n - b * batch_size)
            noise = torch.randn((m, *sample_shape), generator=gen).to(mean.device)  # CPU generator: same on any device
            x = (mean + std * noise).clamp(lo, hi).requires_grad_(True)
            opt = torch.optim.Adam([x], lr=lr)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(iters, 1))
            for _ in range(iters):
                loss = _loss(model, modules, targets, _jittered(x, gen))
                (grad,) = torch.autograd.grad(loss, [x])
                value = float(loss.detach())
                first = value if first is None else first
                x.grad = grad
                opt.step()
                sched.step()
                with torch.no_grad():
                    x.copy_(torch.maximum(torch.minimum(x, hi), lo))
                losses.append(value)
                bar.update(1)
                bar.set_postfix_str(f"loss {value:.3f}")
            batches.append(x.detach().clone())
    report = SynthesisReport(n, iters, len(targets), first if first is not None else math.nan,
                             losses[-1] if losses else math.nan, time.perf_counter() - start)
    return batches, report


def _jittered(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if not _image_like(x):
        return x
    dy, dx = (int(v) for v in torch.randint(-_JITTER, _JITTER + 1, (2,), generator=gen))
    out = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    return out.flip(3) if float(torch.rand((), generator=gen)) < 0.5 else out


def _loss(model: nn.Module, modules: dict[str, nn.Module], targets: list[ChannelTarget], x: torch.Tensor
          ) -> torch.Tensor:
    terms: list[torch.Tensor] = []

    def hook(target: ChannelTarget) -> Callable[..., None]:
        def fn(mod: nn.Module, inputs: tuple[Any, ...], out: Any) -> None:
            terms.append(_mismatch(inputs[0] if target.on_input else out, target))

        return fn

    handles = [modules[t.module].register_forward_hook(hook(t)) for t in targets]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    if not terms:
        raise UserInputError("None of the model's BatchNorm layers ran on the synthetic inputs; "
                             "calibrate it with real data only (synthetic_samples=0).")
    return torch.stack(terms).mean()
