"""The integer GEMM core: one entry point per op, several backends.

Every op takes integer activation codes (with their scale and zero point) and a
:class:`QuantizedWeight`, accumulates in int32 and runs the fused epilogue
(dequantize, bias, ReLU / ReLU6 / clamp / GELU, fp32 / bf16 out or requantized 8-bit out).
The ``reference`` backend is pure torch with exact integer semantics and is the oracle
every fast backend must match (int32 accumulators bit-exactly, outputs to float
rounding). ``backend="auto"`` picks the fastest registered backend that supports the
call, falling back to the reference:

- ``onednn`` (CPU, :mod:`quantune.kernels.cpu_backend`): oneDNN u8 x s8 primitives
  with prepacked weights and fused post-ops; exact on CPUs without VNNI too
  (:mod:`quantune.kernels.onednn_pack`).
- ``triton`` (CUDA, :mod:`quantune.kernels.cuda_backend`): a Triton int8 tensor-core
  GEMM with in-kernel int4 unpacking, registered when CUDA and Triton are present.

Fast backends are imported on the first op call, never by ``import quantune``.
"""

from __future__ import annotations

from quantune.kernels.dispatch import (
    Backend,
    available_backends,
    conv1d,
    conv2d,
    linear,
    register_backend,
    selected_backend,
)
from quantune.kernels.epilogue import Epilogue
from quantune.kernels.weights import QuantizedWeight

__all__ = [
    "Backend",
    "Epilogue",
    "QuantizedWeight",
    "available_backends",
    "conv1d",
    "conv2d",
    "linear",
    "register_backend",
    "selected_backend",
]
