"""Re-estimate BatchNorm statistics on the quantized model, then fold them again.

Quantization changes the mean and variance of every pre-BatchNorm activation, but
folding froze the float model's statistics into the weights. Following the "global
statistics tuning" of Hubara et al. (2021), each folded BatchNorm is reconstructed
from the folded layer's output and the original BatchNorm parameters, runs in
training mode over the calibration data (normalizing with batch statistics, so later
layers see the re-normalized activations) while pooling the statistics, and is folded
again with the new statistics.

With the original ``gamma, beta, mu, sigma`` and ``f = gamma / sigma``, the folded
output is ``z = f (y - mu) + beta`` where ``y`` is the unfolded pre-BN output, so
``y = (z - beta) / f + mu``. Refolding with ``mu', sigma'`` (``f' = gamma / sigma'``)
scales the weight by ``f' / f`` per channel and sets the bias to
``(b_z - beta) f' / f + (mu - mu') f' + beta``. Per-channel weight step sizes scale
with the weight, so the integer codes are unchanged; per-tensor ones are recomputed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from quantune.batches import run_model
from quantune.calibration.channel_stats import ChannelMoments, channel_dims, channel_view
from quantune.calibration.ranges import weight_range
from quantune.modules import QuantizedLayer
from quantune.quantizer import qparams_from_range

# Channels whose gamma is (near) zero carry no signal: their statistics are left alone.
_MIN_GAMMA = 1e-12


def _bn_params(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    mean = bn.running_mean.detach().float()
    var = bn.running_var.detach().float()
    gamma = bn.weight.detach().float() if bn.affine else torch.ones_like(mean)
    beta = bn.bias.detach().float() if bn.affine else torch.zeros_like(mean)
    return gamma, beta, mean, var, float(bn.eps)


@torch.no_grad()
def reestimate_bn(qmodel: Any, bn_modules: dict[str, nn.Module], batches: Iterable[Any]) -> dict[str, dict[str, float]]:
    """Re-estimate and refold the statistics of every BatchNorm folded into a quantized layer.

    Args:
        qmodel: the quantized model (simulate mode while it runs).
        bn_modules: BatchNorm name -> the original (unfolded) module.
        batches: calibration batches.

    Returns:
        BatchNorm name -> ``{"mean_shift": mean |mu' - mu| / sigma, "std_ratio": mean sigma' / sigma}``.
    """
    qlayers: dict[str, QuantizedLayer] = qmodel.quantized_layers()
    pairs = [(ln, bn) for ln, bn in qmodel.bn_pairs if ln in qlayers and bn in bn_modules]
    if not pairs:
        return {}
    params = {b: _bn_params(bn_modules[b]) for _, b in pairs}
    moments = {b: ChannelMoments() for _, b in pairs}

    def hook(bn_name: str) -> Callable[..., torch.Tensor]:
        gamma, beta, mean, var, eps = params[bn_name]
        f = gamma * torch.rsqrt(var + eps)
        live = f.abs() > _MIN_GAMMA

        def fn(mod: QuantizedLayer, inputs: tuple[Any, ...], z: torch.Tensor) -> torch.Tensor:
            cv = lambda v: channel_view(v, z, mod.kind)  # noqa: E731
            y = (z - cv(beta)) / cv(torch.where(live, f, torch.ones_like(f))) + cv(mean)
            moments[bn_name].update(y, mod.kind)
            # Training-mode BatchNorm: normalize with this batch's statistics.
            dims = channel_dims(y, mod.kind)
            b_mean, b_var = y.mean(dims), y.var(dims, unbiased=False)
            out = cv(gamma) * (y - cv(b_mean)) * cv(torch.rsqrt(b_var + eps)) + cv(beta)
            return torch.where(cv(live), out, z)

        return fn

    qmodel.set_mode("simulate")
    handles = [qlayers[ln].register_forward_hook(hook(bn)) for ln, bn in pairs]
    try:
        for batch in batches:
            run_model(qmodel, batch)
    finally:
        for h in handles:
            h.remove()
    report = {}
    for layer_name, bn_name in pairs:
        if moments[bn_name].sum is None:
            continue
        report[bn_name] = _refold(qlayers[layer_name], params[bn_name], moments[bn_name])
    return report


def _refold(layer: QuantizedLayer, p: tuple[torch.Tensor, ...], m: ChannelMoments) -> dict[str, float]:
    gamma, beta, mean, var, eps = p  # type: ignore[misc]
    new_mean, new_var = m.mean.float(), m.var.float()
    f_old = gamma * torch.rsqrt(var + eps)
    f_new = gamma * torch.rsqrt(new_var + eps)
    live = f_old.abs() > _MIN_GAMMA
    ratio = torch.where(live, f_new / torch.where(live, f_old, torch.ones_like(f_old)), torch.ones_like(f_old))
    new_mean = torch.where(live, new_mean, mean)
    w_shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    layer.weight.mul_(ratio.reshape(w_shape))
    bias = layer.bias if layer.bias is not None else torch.zeros_like(beta)
    new_bias = (bias - beta) * ratio + (mean - new_mean) * torch.where(live, f_new, torch.zeros_like(f_new)) + beta
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias)
    else:
        layer.bias.copy_(new_bias)
    if layer.w_scale.dim() == 1:
        layer.w_scale.mul_(ratio.abs())
    else:
        spec = layer.config.weight
        lo, hi = weight_range(layer.weight, spec)
        layer.set_weight_qparams(*qparams_from_range(lo, hi, *layer.w_qrange, spec.symmetric))
    sigma = torch.sqrt(var + eps)
    return {
        "mean_shift": float(((new_mean - mean).abs() / sigma)[live].mean()) if live.any() else 0.0,
        "std_ratio": float((torch.sqrt(new_var + eps) / sigma)[live].mean()) if live.any() else 1.0,
    }
