"""Fuse ReLU / ReLU6 / Hardtanh / clamp that follow a quantized layer into its integer epilogue.

quantune never traces the model, so which op consumes a layer's output is observed
instead: one forward pass runs under a :class:`~torch.overrides.TorchFunctionMode`
that sees every torch call and notes which calls receive each quantized layer's
output tensor. A layer is fused when its output feeds exactly one call that produces
a tensor, and that call is a clamp-like activation with constant bounds (through
``nn.Identity`` modules, which return their input: folded BatchNorms). The integer
GEMM then applies the clamp in its epilogue (a oneDNN post-op), and the activation
module that used to run it is taught to skip a tensor that is provably already
clamped to its own bounds:

- the layer marks its output with ``(lo, hi, tensor._version)``;
- the activation returns its input unchanged only when the mark carries its own
  bounds and the version counter shows no in-place write since.

Skipping is therefore exact whatever the graph (clamping twice to the same bounds
changes nothing); fusing relies on the observed single consumer, which holds for
models whose data flow does not depend on the input values. Under
``torch.inference_mode`` tensors have no version counter; then only activation
modules observed to run once per pass skip (see :mod:`quantune.clamp_mark`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from quantune.clamp_mark import is_clamped
from quantune.modules import QuantizedLayer


def _bounds_of_call(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[float, float] | None:
    """Clamp bounds of an activation call on its first argument, None if it is not one."""
    def arg(i: int, name: str, default: Any) -> Any:
        return args[i] if len(args) > i else kwargs.get(name, default)

    if func in (F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_):
        return 0.0, math.inf
    if func in (F.relu6,):
        return 0.0, 6.0
    if func in (F.hardtanh, F.hardtanh_):
        lo, hi = arg(1, "min_val", -1.0), arg(2, "max_val", 1.0)
    elif func in (torch.clamp, torch.clip, torch.Tensor.clamp, torch.Tensor.clip, torch.Tensor.clamp_):
        lo, hi = arg(1, "min", None), arg(2, "max", None)
    else:
        return None
    if isinstance(lo, torch.Tensor) or isinstance(hi, torch.Tensor):
        return None  # tensor bounds may change per call
    lo = -math.inf if lo is None else float(lo)
    hi = math.inf if hi is None else float(hi)
    return (lo, hi) if lo <= hi else None


def activation_name(bounds: tuple[float, float]) -> str:
    """The epilogue activation string of clamp ``bounds``."""
    lo, hi = bounds
    if lo == 0.0 and hi == math.inf:
        return "relu"
    if lo == 0.0 and hi == 6.0:
        return "relu6"
    return f"clamp:{lo}:{hi}"


class _ConsumerLog(TorchFunctionMode):
    """Notes, per quantized-layer output tensor, every tensor-producing call it feeds."""

    def __init__(self, producers: dict[int, str]) -> None:
        super().__init__()
        self.producers = producers
        self.calls: dict[str, list[tuple[float, float] | None]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not any(isinstance(t, torch.Tensor) for t in tree_leaves(out)):
            return out  # metadata (size, dim, dtype...) does not consume the values
        for t in tree_leaves((args, kwargs)):
            name = self.producers.get(id(t)) if isinstance(t, torch.Tensor) else None
            if name is not None:
                bounds = _bounds_of_call(func, args, kwargs) if (args and args[0] is t) else None
                self.calls.setdefault(name, []).append(bounds)
                if out is t:  # in place (ReLU(inplace=True)): later users consume the activation's output
                    del self.producers[id(t)]
        return out


@dataclass(frozen=True)
class FusionPlan:
    """What to fuse: layer -> epilogue activation; activation modules run once per pass."""

    layers: dict[str, str]
    dedicated: frozenset[str]


def find_fusable(model: nn.Module, run: Callable[[], Any]) -> FusionPlan:
    """The layers whose output feeds exactly one activation, and the once-run activation modules.

    Args:
        model: the module tree holding :class:`QuantizedLayer` modules.
        run: runs one forward pass of ``model`` (any execution mode).
    """
    qlayers = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLayer)}
    producers: dict[int, str] = {}
    keep_alive: list[torch.Tensor] = []  # ids stay unique while the pass runs

    def hook(name: str) -> Callable[..., None]:
        def fn(mod: nn.Module, inputs: tuple[Any, ...], out: Any) -> None:
            if isinstance(out, torch.Tensor):
                producers[id(out)] = name
                keep_alive.append(out)

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in qlayers.items()]
    activation_calls: dict[str, int] = {}

    def count(name: str) -> Callable[..., None]:
        def fn(mod: nn.Module, inputs: tuple[Any, ...]) -> None:
            activation_calls[name] = activation_calls.get(name, 0) + 1

        return fn

    handles += [m.register_forward_pre_hook(count(n)) for n, m in model.named_modules()
                if isinstance(m, tuple(_SKIPPING)) or isinstance(m, _SkipClamped)]
    log = _ConsumerLog(producers)
    try:
        with torch.no_grad(), log:
            run()
    finally:
        for h in handles:
            h.remove()
    fused: dict[str, str] = {}
    for name, calls in log.calls.items():
        if len(calls) == 1 and calls[0] is not None:
            fused[name] = activation_name(calls[0])
    return FusionPlan(fused, frozenset(n for n, c in activation_calls.items() if c == 1))


class _SkipClamped:
    """Mixin: skip the activation on a tensor already clamped to this module's bounds."""

    def _quantune_bounds(self) -> tuple[float, float]:
        if isinstance(self, nn.Hardtanh):
            return float(self.min_val), float(self.max_val)
        return 0.0, math.inf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_clamped(x, self._quantune_bounds(), getattr(self, "_quantune_dedicated", False)):
            return x
        return super().forward(x)  # type: ignore[misc]


class SkippingReLU(_SkipClamped, nn.ReLU):
    """``nn.ReLU`` that returns an input already clamped to ``[0, inf)`` unchanged."""


class SkippingReLU6(_SkipClamped, nn.ReLU6):
    """``nn.ReLU6`` that returns an input already clamped to ``[0, 6]`` unchanged."""


class SkippingHardtanh(_SkipClamped, nn.Hardtanh):
    """``nn.Hardtanh`` that returns an input already clamped to its bounds unchanged."""


_SKIPPING: dict[type, type] = {nn.ReLU: SkippingReLU, nn.ReLU6: SkippingReLU6, nn.Hardtanh: SkippingHardtanh}


def make_skipping(module: nn.Module) -> bool:
    """Let a ReLU / ReLU6 / Hardtanh module skip already-clamped inputs (state unchanged).

    The module's class becomes a subclass of its own class, so ``isinstance`` checks
    and its state dict stay as they were. Returns False for other modules.
    """
    if isinstance(module, _SkipClamped):
        return True
    cls = _SKIPPING.get(type(module))
    if cls is None:
        return False
    module.__class__ = cls
    return True


def apply_fusion(model: nn.Module, plan: FusionPlan) -> list[str]:
    """Set each fused layer's epilogue activation; teach activation modules to skip.

    Returns:
        The activation modules that now skip already-clamped inputs.
    """
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLayer):
            module.fused_activation = plan.layers.get(name)
    skipping = []
    if plan.layers:
        for name, module in model.named_modules():
            if make_skipping(module):
                module._quantune_dedicated = name in plan.dedicated
                skipping.append(name)
    return skipping


__all__ = ["FusionPlan", "activation_name", "apply_fusion", "find_fusable", "make_skipping"]
