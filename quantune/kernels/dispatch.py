"""Backend registry and the public integer ops (linear, conv1d, conv2d)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from quantune.kernels import reference as ref
from quantune.kernels.weights import QuantizedWeight


@dataclass(frozen=True)
class Backend:
    """A set of kernel implementations.

    ``supports(op, qx, weight)`` says whether this backend handles the call (device,
    dtype, bit width, shape); ``ops`` maps op names (``linear``, ``conv2d``,
    ``conv1d``) to functions with the signature of the public op minus ``backend``.
    Higher ``priority`` wins under ``backend="auto"``.
    """

    name: str
    priority: int
    supports: Callable[..., bool]
    ops: dict[str, Callable[..., torch.Tensor]]


def _ref_linear(qx, x_scale, x_zero_point, weight, bias=None, activation=None, out_dtype=torch.float32):
    acc = ref.linear_accumulate(qx, x_zero_point, weight)
    return ref.apply_epilogue(acc, x_scale, weight, bias, activation, acc.dim() - 1, out_dtype)


def _ref_conv2d(qx, x_scale, x_zero_point, weight, bias=None, stride=(1, 1), padding=(0, 0),
                dilation=(1, 1), groups=1, activation=None, out_dtype=torch.float32):
    acc = ref.conv2d_accumulate(qx, x_zero_point, weight, stride, padding, dilation, groups)
    return ref.apply_epilogue(acc, x_scale, weight, bias, activation, 1, out_dtype)


def _ref_conv1d(qx, x_scale, x_zero_point, weight, bias=None, stride=1, padding=0, dilation=1,
                groups=1, activation=None, out_dtype=torch.float32):
    acc = ref.conv1d_accumulate(qx, x_zero_point, weight, stride, padding, dilation, groups)
    return ref.apply_epilogue(acc, x_scale, weight, bias, activation, 1, out_dtype)


_REGISTRY: dict[str, Backend] = {
    "reference": Backend(
        "reference",
        priority=0,
        supports=lambda op, qx, weight: True,
        ops={"linear": _ref_linear, "conv2d": _ref_conv2d, "conv1d": _ref_conv1d},
    )
}


def register_backend(backend: Backend) -> None:
    """Add (or replace) a backend."""
    _REGISTRY[backend.name] = backend


def available_backends() -> list[str]:
    """Registered backend names, fastest first."""
    return [b.name for b in sorted(_REGISTRY.values(), key=lambda b: -b.priority)]


def _select(op: str, backend: str, qx: torch.Tensor, weight: QuantizedWeight) -> Callable[..., torch.Tensor]:
    if backend != "auto":
        if backend not in _REGISTRY:
            raise ValueError(f"Unknown kernel backend {backend!r}; available: {available_backends()}.")
        chosen = _REGISTRY[backend]
        if op not in chosen.ops or not chosen.supports(op, qx, weight):
            raise ValueError(f"Backend {backend!r} does not support this {op} call.")
        return chosen.ops[op]
    for b in sorted(_REGISTRY.values(), key=lambda b: -b.priority):
        if op in b.ops and b.supports(op, qx, weight):
            return b.ops[op]
    raise RuntimeError(f"No backend supports {op}.")  # unreachable: reference supports all


def linear(
    qx: torch.Tensor,
    x_scale: float,
    x_zero_point: int,
    weight: QuantizedWeight,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    out_dtype: torch.dtype = torch.float32,
    backend: str = "auto",
) -> torch.Tensor:
    """Integer linear layer: ``act((qx - zx) @ (qw - zw)^T * sx * sw + bias)``.

    Args:
        qx: integer activation codes ``[..., K]`` (any integer dtype).
        x_scale, x_zero_point: the activation quantization parameters.
        weight: codes ``[N, K]`` with per-channel or per-tensor scale.
        bias: float ``[N]`` or None.
        activation: None, ``relu``, ``relu6`` or ``clamp:<lo>:<hi>``, fused in the epilogue.
        out_dtype: float32 or bfloat16.
        backend: ``auto`` or a name from :func:`available_backends`.
    """
    fn = _select("linear", backend, qx, weight)
    return fn(qx, x_scale, x_zero_point, weight, bias, activation, out_dtype)


def conv2d(
    qx: torch.Tensor,
    x_scale: float,
    x_zero_point: int,
    weight: QuantizedWeight,
    bias: torch.Tensor | None = None,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
    activation: str | None = None,
    out_dtype: torch.dtype = torch.float32,
    backend: str = "auto",
) -> torch.Tensor:
    """Integer 2-D convolution over NCHW codes (zero-point padding), fused epilogue."""
    fn = _select("conv2d", backend, qx, weight)
    return fn(qx, x_scale, x_zero_point, weight, bias, stride, padding, dilation, groups,
              activation, out_dtype)


def conv1d(
    qx: torch.Tensor,
    x_scale: float,
    x_zero_point: int,
    weight: QuantizedWeight,
    bias: torch.Tensor | None = None,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    groups: int = 1,
    activation: str | None = None,
    out_dtype: torch.dtype = torch.float32,
    backend: str = "auto",
) -> torch.Tensor:
    """Integer 1-D convolution over NCL codes, fused epilogue."""
    fn = _select("conv1d", backend, qx, weight)
    return fn(qx, x_scale, x_zero_point, weight, bias, stride, padding, dilation, groups,
              activation, out_dtype)
