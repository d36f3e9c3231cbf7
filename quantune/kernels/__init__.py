"""The integer GEMM core: one entry point per op, several backends.

Every op takes integer activation codes (with their scale and zero point) and a
:class:`QuantizedWeight`, accumulates in int32 and runs the epilogue (dequantize, bias,
activation). The ``reference`` backend is pure torch with exact integer semantics and
is the oracle every fast backend must match (int32 accumulators bit-exactly, outputs to
float rounding). ``backend="auto"`` picks the fastest registered backend that supports
the call, falling back to the reference.
"""

from __future__ import annotations

from quantune.kernels.dispatch import (
    Backend,
    available_backends,
    conv1d,
    conv2d,
    linear,
    register_backend,
)
from quantune.kernels.weights import QuantizedWeight

__all__ = [
    "Backend",
    "QuantizedWeight",
    "available_backends",
    "conv1d",
    "conv2d",
    "linear",
    "register_backend",
]
