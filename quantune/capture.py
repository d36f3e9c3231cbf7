"""Find quantizable layers, fold BatchNorm, and record per-layer shapes, params and MACs.

Nothing here traces the whole graph: layers are found by module type and described by
forward hooks during one real forward pass, so models with Python control flow
(Hugging Face transformers) work. BatchNorm folding pairs a BatchNorm with the
convolution whose output tensor it consumes, observed at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

QUANTIZABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)
# Layers with weights that quantune cannot (yet) quantize: kept float, listed in reports.
UNSUPPORTED_WEIGHTED_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Bilinear,
    nn.LSTM,
    nn.GRU,
    nn.RNN,
    nn.MultiheadAttention,
)


@dataclass(frozen=True)
class LayerInfo:
    """What quantune knows about one quantizable layer.

    MACs and shapes are per sample (batch dimension removed), measured on a real batch.
    """

    name: str
    kind: str  # "linear" | "conv1d" | "conv2d"
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    groups: int
    params: int
    macs: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    has_bias: bool

    @property
    def depthwise(self) -> bool:
        return self.kind != "linear" and self.groups > 1 and self.groups == self.in_channels

    @property
    def weight_elements(self) -> int:
        return self.params - (self.out_channels if self.has_bias else 0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["depthwise"] = self.depthwise
        return d


def has_custom_forward(module: nn.Module) -> bool:
    """A Linear/Conv subclass that overrides ``forward`` (or ``_conv_forward``).

    Such layers do more than the op (TF-style "same" padding, weight standardization,
    ...); swapping them for a quantized op would silently drop that, so they stay float.
    """
    for base in (nn.Linear, nn.Conv1d, nn.Conv2d):
        if isinstance(module, base):
            if type(module).forward is not base.forward:
                return True
            conv_fwd = getattr(base, "_conv_forward", None)
            return conv_fwd is not None and type(module)._conv_forward is not conv_fwd  # type: ignore[attr-defined]
    return False


def layer_kind(module: nn.Module) -> str | None:
    """``linear`` / ``conv1d`` / ``conv2d`` for quantizable modules, else None."""
    if has_custom_forward(module):
        return None
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "conv2d"
    if isinstance(module, nn.Conv1d):
        return "conv1d"
    return None


def find_quantizable(model: nn.Module) -> list[str]:
    """Names of all Linear / Conv1d / Conv2d modules, in registration order."""
    return [n for n, m in model.named_modules() if layer_kind(m) is not None]


def find_unsupported(model: nn.Module) -> list[tuple[str, str]]:
    """``(name, type)`` of weighted layers that stay float because quantune can't quantize them."""
    return [
        (n, type(m).__name__ + (" (custom forward)" if has_custom_forward(m) else ""))
        for n, m in model.named_modules()
        if isinstance(m, UNSUPPORTED_WEIGHTED_TYPES) or has_custom_forward(m)
    ]


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    per_sample_out = out[0].numel() if out.dim() > 1 else out.numel()
    if isinstance(module, nn.Linear):
        return per_sample_out * module.in_features
    k = 1
    for s in module.kernel_size:  # type: ignore[union-attr]
        k *= s
    return per_sample_out * (module.in_channels // module.groups) * k  # type: ignore[operator]


def describe_layers(
    model: nn.Module,
    names: list[str],
    run: Callable[[], Any],
) -> list[LayerInfo]:
    """Run ``run()`` (one forward pass) with hooks and describe the named layers.

    Layers that never ran (dead branches) are described with zero MACs and empty shapes.
    """
    modules = dict(model.named_modules())
    seen: dict[str, tuple[tuple[int, ...], tuple[int, ...], int]] = {}

    def hook(name: str) -> Callable[..., None]:
        def fn(mod: nn.Module, inputs: tuple[Any, ...], out: Any) -> None:
            if name not in seen and isinstance(out, torch.Tensor):
                x = inputs[0]
                seen[name] = (tuple(x.shape[1:]), tuple(out.shape[1:]), _macs(mod, out))

        return fn

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    infos = []
    for n in names:
        m = modules[n]
        kind = layer_kind(m)
        assert kind is not None
        in_shape, out_shape, macs = seen.get(n, ((), (), 0))
        if isinstance(m, nn.Linear):
            cin, cout, ks, groups = m.in_features, m.out_features, (), 1
        else:
            cin, cout, ks, groups = m.in_channels, m.out_channels, tuple(m.kernel_size), m.groups  # type: ignore[union-attr]
        infos.append(
            LayerInfo(
                name=n,
                kind=kind,
                in_channels=int(cin),
                out_channels=int(cout),
                kernel_size=tuple(int(k) for k in ks),
                groups=int(groups),
                params=sum(p.numel() for p in m.parameters(recurse=False)),
                macs=int(macs),
                input_shape=in_shape,
                output_shape=out_shape,
                has_bias=getattr(m, "bias", None) is not None,
            )
        )
    return infos
