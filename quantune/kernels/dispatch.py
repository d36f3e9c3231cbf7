"""Backend registry and the public integer ops (linear, conv1d, conv2d).

Backends register themselves lazily: the first op call imports the CPU (oneDNN) and,
when CUDA is available, the Triton backend modules, so ``import quantune`` stays cheap
and never touches CUDA or Triton.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from quantune.kernels import reference as ref
from quantune.kernels.epilogue import Epilogue
from quantune.kernels.weights import QuantizedWeight


@dataclass(frozen=True)
class Backend:
    """A set of kernel implementations.

    ``supports(op, qx, weight)`` says whether this backend handles the call (device,
    dtype, bit width, shape); ``ops`` maps op names (``linear``, ``conv2d``,
    ``conv1d``) to functions ``fn(qx, x_scale, x_zero_point, weight, bias, [geometry,]
    epilogue)`` where ``geometry`` is ``(stride, padding, dilation, groups)`` for
    convolutions and ``epilogue`` an :class:`Epilogue`. Higher ``priority`` wins under
    ``backend="auto"``.
    """

    name: str
    priority: int
    supports: Callable[..., bool]
    ops: dict[str, Callable[..., torch.Tensor]]


def _ref_linear(qx, x_scale, x_zero_point, weight, bias, epi: Epilogue):
    acc = ref.linear_accumulate(qx, x_zero_point, weight)
    return ref.apply_epilogue(acc, x_scale, weight, bias, epi.activation, acc.dim() - 1,
                              epi.out_dtype, epi.out_scale, epi.out_zero_point)


def _ref_conv2d(qx, x_scale, x_zero_point, weight, bias, stride, padding, dilation, groups,
                epi: Epilogue):
    acc = ref.conv2d_accumulate(qx, x_zero_point, weight, stride, padding, dilation, groups)
    return ref.apply_epilogue(acc, x_scale, weight, bias, epi.activation, 1, epi.out_dtype,
                              epi.out_scale, epi.out_zero_point)


def _ref_conv1d(qx, x_scale, x_zero_point, weight, bias, stride, padding, dilation, groups,
                epi: Epilogue):
    acc = ref.conv1d_accumulate(qx, x_zero_point, weight, stride, padding, dilation, groups)
    return ref.apply_epilogue(acc, x_scale, weight, bias, epi.activation, 1, epi.out_dtype,
                              epi.out_scale, epi.out_zero_point)


_REGISTRY: dict[str, Backend] = {
    "reference": Backend(
        "reference",
        priority=0,
        supports=lambda op, qx, weight: True,
        ops={"linear": _ref_linear, "conv2d": _ref_conv2d, "conv1d": _ref_conv1d},
    )
}
_LOADED = False


def _load_builtin_backends() -> None:
    """Import the built-in fast backends once; each registers itself if usable here."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from quantune.kernels import cpu_backend, fbgemm_backend

    cpu_backend.register()
    fbgemm_backend.register()
    if torch.cuda.is_available():
        from quantune.kernels import cuda_backend

        cuda_backend.register()


def register_backend(backend: Backend) -> None:
    """Add (or replace) a backend."""
    _REGISTRY[backend.name] = backend


def available_backends() -> list[str]:
    """Registered backend names, fastest first."""
    _load_builtin_backends()
    return [b.name for b in sorted(_REGISTRY.values(), key=lambda b: -b.priority)]


def select(op: str, backend: str, qx: torch.Tensor, weight: QuantizedWeight) -> Callable[..., torch.Tensor]:
    """The implementation of ``op`` that ``backend`` (or ``auto``) picks for this call."""
    _load_builtin_backends()
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


def selected_backend(op: str, qx: torch.Tensor, weight: QuantizedWeight) -> str:
    """Name of the backend ``auto`` would run this call on (for reports and tests)."""
    _load_builtin_backends()
    for b in sorted(_REGISTRY.values(), key=lambda b: -b.priority):
        if op in b.ops and b.supports(op, qx, weight):
            return b.name
    return "reference"


def _epilogue(activation, out_dtype, out_scale, out_zero_point) -> Epilogue:
    return Epilogue(activation, out_dtype, 1.0 if out_scale is None else float(out_scale),
                    int(out_zero_point))


def linear(
    qx: torch.Tensor,
    x_scale: float,
    x_zero_point: int,
    weight: QuantizedWeight,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    out_dtype: torch.dtype = torch.float32,
    backend: str = "auto",
    out_scale: float | None = None,
    out_zero_point: int = 0,
) -> torch.Tensor:
    """Integer linear layer: ``act((qx - zx) @ (qw - zw)^T * sx * sw + bias)``.

    Args:
        qx: integer activation codes ``[..., K]`` (uint8 is the fast path on CPU).
        x_scale, x_zero_point: the activation quantization parameters.
        weight: codes ``[N, K]`` with per-channel or per-tensor scale.
        bias: float ``[N]`` or None.
        activation: None, ``relu``, ``relu6`` or ``clamp:<lo>:<hi>``, fused in the epilogue.
        out_dtype: float32 / bfloat16, or uint8 / int8 to requantize the output.
        backend: ``auto`` or a name from :func:`available_backends`.
        out_scale, out_zero_point: quantization of an 8-bit output.

    Returns:
        ``[..., N]`` in ``out_dtype``.
    """
    epi = _epilogue(activation, out_dtype, out_scale, out_zero_point)
    fn = select("linear", backend, qx, weight)
    return fn(qx, float(x_scale), int(x_zero_point), weight, bias, epi)


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
    out_scale: float | None = None,
    out_zero_point: int = 0,
) -> torch.Tensor:
    """Integer 2-D convolution over NCHW codes (zero-point padding), fused epilogue.

    Channels-last inputs are the fast path on CPU; the output keeps the input's memory
    format where the backend allows it.
    """
    epi = _epilogue(activation, out_dtype, out_scale, out_zero_point)
    fn = select("conv2d", backend, qx, weight)
    return fn(qx, float(x_scale), int(x_zero_point), weight, bias, tuple(stride), tuple(padding),
              tuple(dilation), int(groups), epi)


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
    out_scale: float | None = None,
    out_zero_point: int = 0,
) -> torch.Tensor:
    """Integer 1-D convolution over NCL codes, fused epilogue."""
    epi = _epilogue(activation, out_dtype, out_scale, out_zero_point)
    fn = select("conv1d", backend, qx, weight)
    return fn(qx, float(x_scale), int(x_zero_point), weight, bias, int(stride), int(padding),
              int(dilation), int(groups), epi)
