"""Fold BatchNorm into the convolution (or linear layer) that feeds it.

Pairs are found at run time: a BatchNorm is folded into layer L when, during one
forward pass, the tensor the BatchNorm receives is the very tensor object L returned,
unmodified (no in-place op in between), and each ran exactly once. This needs no graph
tracing, so it works on any model, and it never folds a BatchNorm that reads a sum, a
concatenation or a shared output.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from quantune.capture import layer_kind

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


def find_bn_pairs(model: nn.Module, run: Callable[[], Any]) -> list[tuple[str, str]]:
    """``(layer_name, bn_name)`` pairs foldable in ``model``, observed during ``run()``."""
    modules = dict(model.named_modules())
    # id(output) -> (weak reference to it, producing layer). Weak: keeping every output
    # alive to keep ids unique held a whole forward pass's activations at once (hundreds
    # of MB for EfficientNet-Lite0 at batch 8); a dead tensor's reused id now fails the
    # identity check instead.
    # The version counter catches an in-place op in between (conv -> ReLU(inplace=True)
    # -> BatchNorm hands the BatchNorm the very same object, but not the conv's output).
    producers: dict[int, tuple[weakref.ref[torch.Tensor], int, str]] = {}
    calls: dict[str, int] = {}
    consumed: dict[str, str | None] = {}  # bn name -> the layer whose output it received

    def layer_hook(name: str) -> Callable[..., None]:
        def fn(mod: nn.Module, inputs: tuple[Any, ...], out: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(out, torch.Tensor):
                producers[id(out)] = (weakref.ref(out), out._version, name)

        return fn

    def bn_hook(name: str) -> Callable[..., None]:
        def fn(mod: nn.Module, inputs: tuple[Any, ...]) -> None:
            calls[name] = calls.get(name, 0) + 1
            x = inputs[0]
            ref, version, layer = producers.get(id(x), (None, -1, None))
            consumed[name] = layer if ref is not None and ref() is x and x._version == version else None

        return fn

    handles = []
    for n, m in modules.items():
        if layer_kind(m) is not None:
            handles.append(m.register_forward_hook(layer_hook(n)))
        elif isinstance(m, _BN_TYPES) and m.track_running_stats and m.running_mean is not None:
            handles.append(m.register_forward_pre_hook(bn_hook(n)))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    pairs = []
    for bn_name, layer in consumed.items():
        if layer is None or calls.get(layer) != 1 or calls.get(bn_name) != 1:
            continue
        lm, bm = modules[layer], modules[bn_name]
        out_ch = lm.out_features if isinstance(lm, nn.Linear) else lm.out_channels
        if out_ch == bm.num_features:
            pairs.append((layer, bn_name))
    return pairs


def fold_bn_into(layer: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn``'s affine transform and running statistics into ``layer`` in place.

    ``W' = W * g / sqrt(var + eps)`` per output channel and
    ``b' = (b - mean) * g / sqrt(var + eps) + beta``.
    """
    with torch.no_grad():
        inv_std = torch.rsqrt(bn.running_var.float() + bn.eps)
        gamma = bn.weight.float() if bn.affine else torch.ones_like(inv_std)
        beta = bn.bias.float() if bn.affine else torch.zeros_like(inv_std)
        factor = gamma * inv_std
        w = layer.weight
        w.mul_(factor.reshape(-1, *([1] * (w.dim() - 1))).to(w.dtype))
        old_bias = layer.bias.float() if layer.bias is not None else torch.zeros_like(factor)
        new_bias = (old_bias - bn.running_mean.float()) * factor + beta
        if layer.bias is None:
            layer.bias = nn.Parameter(new_bias.to(w.dtype))
        else:
            layer.bias.copy_(new_bias)


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted path) with ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def fold_batchnorm(model: nn.Module, pairs: list[tuple[str, str]]) -> None:
    """Fold each ``(layer, bn)`` pair and replace the BatchNorm with ``nn.Identity``."""
    for layer_name, bn_name in pairs:
        fold_bn_into(model.get_submodule(layer_name), model.get_submodule(bn_name))
        set_submodule(model, bn_name, nn.Identity())
