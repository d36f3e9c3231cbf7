"""Fuse ReLU / ReLU6 / Hardtanh / clamp / GELU into a quantized layer's epilogue; chain integer layers.

quantune never traces the model, so which op consumes a layer's output is observed
instead: one forward pass runs under a :class:`~torch.overrides.TorchFunctionMode`
that sees every torch call and notes which calls receive each quantized layer's
output tensor. A layer is fused when its output feeds exactly one call that produces
a tensor, and that call is an activation the epilogue knows (through ``nn.Identity``
modules, which return their input: folded BatchNorms). The integer GEMM then applies
the activation in its epilogue (a oneDNN post-op), and the activation module that used
to run it is taught to skip a tensor that provably went through it already:

- the layer marks its output with ``(activation, tensor._version)``;
- the activation returns its input unchanged only when the mark names its own
  activation and the version counter shows no in-place write since; it consumes the
  mark, so a second activation on the same tensor computes again.

A clamp (ReLU, ReLU6, Hardtanh, ``torch.clamp``) is idempotent: a functional clamp that
cannot skip simply clamps twice, so it is fused wherever it is the single consumer.
GELU is not: it is fused only when it runs inside an activation module that is called
once per pass (dedicated) and returns the GELU's result, so that module, taught to skip,
is certain to see the mark. ``nn.ReLU`` / ``nn.ReLU6`` / ``nn.Hardtanh`` / ``nn.GELU``
are taught by a class swap; any other parameter-free activation module observed to do
exactly that (e.g. Hugging Face's ``GELUActivation``) is wrapped in
:class:`SkippingActivation`. Fusing relies on the observed single consumer, which holds
for models whose data flow does not depend on the input values. Under
``torch.inference_mode`` tensors have no version counter; then only activation
modules observed to run once per pass skip (see :mod:`quantune.activation_mark`).

Chains: when the (activated, possibly zero-padded) output of an integer layer is
consumed only by another integer layer, the producer's epilogue requantizes straight
to the consumer's input grid, so the consumer receives uint8 codes and skips its
quantize pass, and 4x fewer bytes cross memory. Codes pass only through activation
modules that skip them and ``ZeroPad2d`` modules that pad them with their zero point.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from quantune.activation_mark import code_zero_point, mark_codes, take_activation_mark
from quantune.bn_folding import set_submodule
from quantune.kernels.epilogue import GELU_FORMS
from quantune.modules import QuantizedLayer


def _activation_of_call(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """Epilogue name of an activation call on its first argument, None if it is not one."""
    def arg(i: int, name: str, default: Any) -> Any:
        return args[i] if len(args) > i else kwargs.get(name, default)

    if func in (F.gelu,):
        approximate = arg(1, "approximate", "none")
        return next((k for k, v in GELU_FORMS.items() if v == approximate), None)
    if func in (F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_):
        return "relu"
    if func in (F.relu6,):
        return "relu6"
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
    return activation_name((lo, hi)) if lo <= hi else None


def activation_name(bounds: tuple[float, float]) -> str:
    """The epilogue activation string of clamp ``bounds``."""
    lo, hi = bounds
    if lo == 0.0 and hi == math.inf:
        return "relu"
    if lo == 0.0 and hi == 6.0:
        return "relu6"
    return f"clamp:{lo}:{hi}"


def _idempotent(activation: str) -> bool:
    return activation not in GELU_FORMS


@dataclass(frozen=True)
class _Call:
    """One tensor-producing call that consumed a tracked tensor."""

    activation: str | None  # the epilogue activation this call applied to the tensor
    layer: str | None  # the quantized layer whose forward made the call
    module: str | None  # the activation module whose forward made the call
    pad: str | None = None  # the ZeroPad2d module whose forward padded the tensor


class _ConsumerLog(TorchFunctionMode):
    """Notes every tensor-producing call fed by a quantized layer's output.

    Tracked tensors are a layer's output (stage ``out``), the result of an activation
    applied to it (stage ``post``) and of a ``ZeroPad2d`` after either (stage ``padded``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.producers: dict[int, tuple[str, str]] = {}
        self.calls: dict[tuple[str, str], list[_Call]] = {}
        #: activation module -> the tracked tensor its forward returned (layer, stage).
        self.returned: dict[str, tuple[str, str] | None] = {}
        self.layer_stack: list[str] = []
        self.activation_stack: list[str] = []
        self.pad_stack: list[str] = []
        self._alive: list[torch.Tensor] = []  # ids stay unique while the pass runs

    def produced(self, t: torch.Tensor, layer: str, stage: str) -> None:
        self.producers[id(t)] = (layer, stage)
        self._alive.append(t)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not any(isinstance(t, torch.Tensor) for t in tree_leaves(out)):
            return out  # metadata (size, dim, dtype...) does not consume the values
        for t in tree_leaves((args, kwargs)):
            key = self.producers.get(id(t)) if isinstance(t, torch.Tensor) else None
            if key is None:
                continue
            first = bool(args) and args[0] is t
            activation = _activation_of_call(func, args, kwargs) if first else None
            pad = self.pad_stack[-1] if self.pad_stack and first and func is F.pad else None
            call = _Call(activation, self.layer_stack[-1] if self.layer_stack else None,
                         self.activation_stack[-1] if self.activation_stack else None, pad)
            self.calls.setdefault(key, []).append(call)
            if not isinstance(out, torch.Tensor):
                continue
            if activation is not None and key[1] == "out":
                if out is t:  # in place (ReLU(inplace=True)): the same object continues
                    del self.producers[id(t)]
                self.produced(out, key[0], "post")
            elif pad is not None and key[1] in ("out", "post"):
                self.produced(out, key[0], "padded")
        return out


@dataclass(frozen=True)
class FusionPlan:
    """What to fuse, decided from one observed forward pass.

    Attributes:
        layers: layer -> epilogue activation (its output feeds only that activation).
        dedicated: activation modules that ran once in the pass.
        chains: layer -> the quantized layer that alone consumes its (activated)
            output, and whether the link holds under ``torch.inference_mode`` (no
            activation between, or a dedicated activation module).
        wrap: activation modules of types quantune cannot class-swap that must skip
            (wrapped in :class:`SkippingActivation`) -> their activation.
    """

    layers: dict[str, str]
    dedicated: frozenset[str]
    chains: dict[str, tuple[str, bool]]
    wrap: dict[str, str] = field(default_factory=dict)


def _is_activation_module(m: nn.Module) -> bool:
    """Activations that :func:`make_skipping` can teach to skip (exact types only)."""
    return type(m) in _SKIPPING or isinstance(m, (_SkipActivation, SkippingActivation))


def _may_be_activation(m: nn.Module) -> bool:
    """A module whose forward may be a bare activation: a leaf without parameters or buffers."""
    if _is_activation_module(m):
        return True
    if isinstance(m, (QuantizedLayer, nn.Identity, nn.ZeroPad2d)) or next(m.children(), None) is not None:
        return False
    return next(m.parameters(recurse=False), None) is None and next(m.buffers(recurse=False), None) is None


def find_fusable(model: nn.Module, run: Callable[[], Any]) -> FusionPlan:
    """Observe one forward pass (``run``) of ``model`` and plan activation fusion and chains.

    Args:
        model: the module tree holding :class:`QuantizedLayer` modules.
        run: runs one forward pass of ``model`` (any execution mode).
    """
    log = _ConsumerLog()
    layer_calls: dict[str, int] = {}
    activation_calls: dict[str, int] = {}

    def enter(stack: list[str], counts: dict[str, int], name: str) -> Callable[..., None]:
        def fn(mod: nn.Module, inputs: tuple[Any, ...]) -> None:
            stack.append(name)
            counts[name] = counts.get(name, 0) + 1

        return fn

    def leave(stack: list[str], name: str | None, activation: str | None = None) -> Callable[..., None]:
        def fn(mod: nn.Module, inputs: tuple[Any, ...], out: Any) -> None:
            stack.pop()
            if name is not None and isinstance(out, torch.Tensor):
                log.produced(out, name, "out")
            if activation is not None:
                log.returned[activation] = log.producers.get(id(out)) if isinstance(out, torch.Tensor) else None

        return fn

    handles = []
    for name, m in model.named_modules():
        if isinstance(m, QuantizedLayer):
            handles += [m.register_forward_pre_hook(enter(log.layer_stack, layer_calls, name)),
                        m.register_forward_hook(leave(log.layer_stack, name))]
        elif _may_be_activation(m):
            handles += [m.register_forward_pre_hook(enter(log.activation_stack, activation_calls, name)),
                        m.register_forward_hook(leave(log.activation_stack, None, name))]
        elif type(m) in (nn.ZeroPad2d, CodePaddingZeroPad2d):
            handles += [m.register_forward_pre_hook(enter(log.pad_stack, {}, name)),
                        m.register_forward_hook(leave(log.pad_stack, None))]
    try:
        with torch.no_grad(), log:
            run()
    finally:
        for h in handles:
            h.remove()
    modules = dict(model.named_modules())
    dedicated = frozenset(n for n, c in activation_calls.items() if c == 1)
    fused: dict[str, str] = {}
    chains: dict[str, tuple[str, bool]] = {}
    wrap: dict[str, str] = {}
    for name in layer_calls:
        calls = log.calls.get((name, "out"), [])
        if layer_calls[name] != 1 or len(calls) != 1:
            continue
        call, inference_safe = calls[0], True
        if call.activation is not None:
            module = call.module
            # The module can skip when it is a known activation type, or when its
            # forward returned exactly this activation's result (it is a bare activation).
            if module is not None and not _is_activation_module(modules[module]):
                module = module if log.returned.get(module) == (name, "post") else None
            if module is None or (not _idempotent(call.activation) and module not in dedicated):
                if _idempotent(call.activation):
                    fused[name] = call.activation  # clamping twice is harmless; no chain
                continue
            fused[name] = call.activation
            if not _is_activation_module(modules[module]):
                wrap[module] = call.activation
            inference_safe = module in dedicated
            calls = log.calls.get((name, "post"), [])
            if len(calls) != 1:
                continue
            call = calls[0]
        if call.pad is not None:  # codes are padded with their zero point on the way
            calls = log.calls.get((name, "padded"), [])
            if len(calls) != 1:
                continue
            call = calls[0]
        if call.layer not in (None, name) and layer_calls.get(call.layer) == 1:
            chains[name] = (call.layer, inference_safe)
    return FusionPlan(fused, dedicated, chains, wrap)


def _skip(module: nn.Module, x: torch.Tensor, activation: str) -> bool:
    """Whether ``module`` must return ``x`` unchanged (its activation was applied already)."""
    if take_activation_mark(x, activation, getattr(module, "_quantune_dedicated", False)):
        return True
    if x.dtype == torch.uint8:  # chained activation codes reached an activation that must skip them
        raise RuntimeError("quantune: integer activation codes reached an activation that does not "
                           "skip them; disable chaining with qmodel.fuse_activations = False and report this")
    return False


class _SkipActivation:
    """Mixin: skip the activation on a tensor that already went through it."""

    def _quantune_activation(self) -> str:
        if isinstance(self, nn.GELU):
            return "gelu" if self.approximate == "none" else "gelu_tanh"
        if isinstance(self, nn.Hardtanh):  # ReLU6 included
            return activation_name((float(self.min_val), float(self.max_val)))
        return "relu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _skip(self, x, self._quantune_activation()):  # type: ignore[arg-type]
            return x
        return super().forward(x)  # type: ignore[misc]


class SkippingReLU(_SkipActivation, nn.ReLU):
    """``nn.ReLU`` that returns an input already clamped to ``[0, inf)`` unchanged."""


class SkippingReLU6(_SkipActivation, nn.ReLU6):
    """``nn.ReLU6`` that returns an input already clamped to ``[0, 6]`` unchanged."""


class SkippingHardtanh(_SkipActivation, nn.Hardtanh):
    """``nn.Hardtanh`` that returns an input already clamped to its bounds unchanged."""


class SkippingGELU(_SkipActivation, nn.GELU):
    """``nn.GELU`` that returns an input its producer's epilogue already passed through GELU."""


_SKIPPING: dict[type, type] = {nn.ReLU: SkippingReLU, nn.ReLU6: SkippingReLU6, nn.Hardtanh: SkippingHardtanh,
                               nn.GELU: SkippingGELU}


class SkippingActivation(nn.Module):
    """Wraps an activation module of a foreign type (observed to compute exactly
    ``activation`` on its input) so it returns an input that went through it already."""

    def __init__(self, inner: nn.Module, activation: str) -> None:
        super().__init__()
        self.inner = inner
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _skip(self, x, self.activation):
            return x
        return self.inner.forward(x)  # not __call__: the inner module is invisible to hooks

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


class CodePaddingZeroPad2d(nn.ZeroPad2d):
    """``nn.ZeroPad2d`` that pads chained uint8 activation codes with their zero point
    (the code of real 0.0); floats are padded with 0 as before."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zero_point = code_zero_point(x)
        if zero_point is None:
            return super().forward(x)
        return mark_codes(F.pad(x, self.padding, "constant", zero_point), zero_point)


def make_skipping(module: nn.Module) -> bool:
    """Let a ReLU / ReLU6 / Hardtanh / GELU module skip inputs already activated (state unchanged).

    The module's class becomes a subclass of its own class, so ``isinstance`` checks
    and its state dict stay as they were. Returns False for other modules.
    """
    if isinstance(module, (_SkipActivation, SkippingActivation)):
        return True
    cls = _SKIPPING.get(type(module))
    if cls is None:
        return False
    module.__class__ = cls
    return True


def apply_fusion(model: nn.Module, plan: FusionPlan) -> list[str]:
    """Set each fused layer's epilogue activation; teach activation modules to skip.

    Returns:
        The activation modules that now skip already-activated inputs.
    """
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLayer):
            module.fused_activation = plan.layers.get(name)
    for name, activation in plan.wrap.items():
        set_submodule(model, name, SkippingActivation(model.get_submodule(name), activation))
    skipping = []
    if plan.layers or plan.chains:
        for name, module in model.named_modules():
            if make_skipping(module):
                module._quantune_dedicated = name in plan.dedicated
                skipping.append(name)
            elif type(module) is nn.ZeroPad2d and plan.chains:
                module.__class__ = CodePaddingZeroPad2d
    return skipping


def apply_chains(model: nn.Module, plan: FusionPlan) -> dict[str, str]:
    """Let each planned producer hand its consumer 8-bit codes instead of floats.

    A link is made only when both layers run the integer kernel (their path decisions
    are made) and the consumer's activations are unsigned 8-bit codes (``[0, 255]``),
    the grid the producer's epilogue requantizes to, without smoothing (its per-channel
    divisor would need a per-channel requantization scale).

    Returns:
        producer -> consumer of every link made.
    """
    modules = dict(model.named_modules())
    made: dict[str, str] = {}
    for module in modules.values():
        if isinstance(module, QuantizedLayer):
            module.chain_target = None
    for producer, (consumer, inference_safe) in plan.chains.items():
        src, dst = modules.get(producer), modules.get(consumer)
        if not (isinstance(src, QuantizedLayer) and isinstance(dst, QuantizedLayer)):
            continue
        decisions = (src.integer_decision, dst.integer_decision)
        if any(d is None or d.path != "integer" for d in decisions) or dst.a_qrange != (0, 255):
            continue
        if getattr(dst, "input_smoothing", None) is not None:  # per-channel divisor: not one grid
            continue
        src.chain_target = (dst, inference_safe)
        made[producer] = consumer
    return made


__all__ = [
    "FusionPlan", "SkippingActivation", "activation_name", "apply_chains", "apply_fusion", "find_fusable",
    "make_skipping",
]
