"""The small-batch CPU backend: FBGEMM's int8 linear for few activation rows.

Chosen by measurement (``benchmarks/gemm.py``): for a Linear call with few rows (a
batch of one sentence, a GEMV-like decoder step) oneDNN's int8 GEMM is no faster than
fp32, while FBGEMM's packed kernels are 4x faster than oneDNN at 16 x 4096 x 4096 on an
AVX2 CPU; from a hundred rows on the two are even and oneDNN's fused epilogue wins.
So this backend takes ``linear`` calls with at most :data:`MAX_ROWS` rows and leaves
everything else to oneDNN.

Exactness, as every backend: FBGEMM's u8 x s8 kernel sums pairs of products in int16
with saturation on CPUs without VNNI (measured here: 255 x 127 x 64 comes out halved),
so on such CPUs it only takes weights whose centred codes stay within +-64 (7-bit, int4,
int2 weights), where no pair can saturate. Its op quantizes a float input itself; it is
given the dequantized codes ``(q - zx) * sx``, which it rounds back to exactly ``q``.
The accumulator is then the oracle's; dequantize, bias and activation are float ops.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator

import torch

from quantune.kernels import cpu_caps
from quantune.kernels.dispatch import Backend, register_backend
from quantune.kernels.epilogue import Epilogue, apply_activation, requantize
from quantune.kernels.onednn_pack import centred_codes
from quantune.kernels.weights import QuantizedWeight

NAME = "fbgemm"
#: Linear calls with at most this many activation rows go to FBGEMM.
MAX_ROWS = 64
_CACHE_KEY = "fbgemm_linear"


@contextlib.contextmanager
def _engine() -> Iterator[None]:
    """Prepack under the FBGEMM engine without changing the caller's choice."""
    saved = torch.backends.quantized.engine
    torch.backends.quantized.engine = "fbgemm"
    try:
        yield
    finally:
        torch.backends.quantized.engine = saved


@functools.cache
def available() -> bool:
    """FBGEMM's quantized linear ops exist and run here."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return False
    try:
        codes = torch.ones(3, 4, dtype=torch.int8)
        packed = _prepack(codes, torch.ones(3))
        y = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
            torch.arange(8.0).reshape(2, 4), 1.0, 0, packed)
    except (RuntimeError, AttributeError):
        return False
    return bool(torch.equal(y, torch.tensor([[6.0] * 3, [22.0] * 3])))


def _prepack(codes: torch.Tensor, scale: torch.Tensor) -> object:
    n = codes.shape[0]
    with warnings.catch_warnings():
        # torch marks quantized tensors deprecated; once they are gone available() is
        # False and oneDNN takes every call.
        warnings.simplefilter("ignore", UserWarning)
        qw = torch._make_per_channel_quantized_tensor(codes, scale.double(), torch.zeros(n, dtype=torch.long), 0)
        with _engine():
            return torch.ops.quantized.linear_prepack(qw, None)


def _packed(weight: QuantizedWeight) -> object:
    if _CACHE_KEY not in weight.backend_cache:
        codes = centred_codes(weight)
        assert codes is not None  # supports() checked it
        scale = weight.scale if weight.scale.numel() > 1 else weight.scale.expand(weight.out_channels)
        weight.backend_cache[_CACHE_KEY] = _prepack(codes.reshape(weight.out_channels, -1).contiguous(), scale)
    return weight.backend_cache[_CACHE_KEY]


def _exact_here(weight: QuantizedWeight) -> bool:
    key = "fbgemm_exact"
    if key not in weight.backend_cache:
        codes = centred_codes(weight)
        ok = codes is not None
        if ok and cpu_caps.u8s8_saturates():
            ok = int(codes.to(torch.int16).abs().max()) <= cpu_caps.SATURATION_SAFE_MAX_ABS_CODE
        weight.backend_cache[key] = ok
    return weight.backend_cache[key]


def supports(op: str, qx: torch.Tensor, weight: QuantizedWeight) -> bool:
    """Linear, CPU, uint8 codes, few rows, and a weight this CPU's kernel runs exactly."""
    if op != "linear" or qx.device.type != "cpu" or qx.dtype != torch.uint8 or qx.numel() == 0:
        return False
    if weight.codes.device.type != "cpu" or weight.codes.dim() != 2:
        return False
    rows = qx.numel() // qx.shape[-1]
    return rows <= MAX_ROWS and available() and _exact_here(weight)


def linear(qx, x_scale, x_zero_point, weight, bias, epi: Epilogue) -> torch.Tensor:
    """Integer linear on FBGEMM (signature of the dispatch backend ops)."""
    lead = qx.shape[:-1]
    x = qx.reshape(-1, qx.shape[-1]).float().sub_(x_zero_point).mul_(x_scale)  # exact codes again inside
    y = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(x, x_scale, x_zero_point, _packed(weight))
    if bias is not None:
        y = y.add_(bias)
    y = apply_activation(y, epi.activation, inplace=True)
    y = y.reshape(*lead, y.shape[-1])
    if epi.requantize:
        return requantize(y, epi)
    return y.to(epi.out_dtype) if y.dtype != epi.out_dtype else y


def register() -> None:
    """Register the FBGEMM backend when its ops run here (above oneDNN for the calls it takes)."""
    if available():
        register_backend(Backend(NAME, priority=20, supports=supports, ops={"linear": linear}))
