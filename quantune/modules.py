"""Quantized replacements of Linear / Conv1d / Conv2d with three execution modes.

- ``float``: the original float layer (BatchNorm already folded).
- ``simulate``: fake-quant of the input activation and the weight in float
  (differentiable; AdaQuant trains through it).
- ``integer``: the input is quantized to 8-bit codes, the weight codes are integers,
  and the op runs on the integer GEMM core (int32 accumulation, fused dequantize /
  bias epilogue). Its int32 accumulators equal the simulated mode's exactly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quantune import kernels
from quantune.config import ActQuant, LayerQuantConfig, WeightQuant
from quantune.errors import UserInputError
from quantune.kernels.weights import QuantizedWeight
from quantune.quantizer import fake_quantize, qrange, quantize, symmetric_qrange

MODES = ("float", "simulate", "integer")


def weight_qrange(spec: WeightQuant) -> tuple[int, int]:
    """Integer range of weight codes (always signed, so codes fit int8)."""
    return symmetric_qrange(spec.bits) if spec.symmetric else qrange(spec.bits, signed=True)


def act_qrange(spec: ActQuant) -> tuple[int, int]:
    """Integer range of activation codes: signed when symmetric, else unsigned."""
    return qrange(spec.bits, signed=spec.symmetric)


class QuantizedLayer(nn.Module):
    """A quantized Linear, Conv1d or Conv2d.

    Holds the float weight (for simulation and layer-wise calibration) and the
    quantization parameters as buffers; integer weight codes are derived from them and
    cached until the weight or its scale changes.
    """

    def __init__(self, module: nn.Module, config: LayerQuantConfig) -> None:
        super().__init__()
        if isinstance(module, nn.Linear):
            self.kind = "linear"
        elif isinstance(module, nn.Conv2d):
            self.kind = "conv2d"
        elif isinstance(module, nn.Conv1d):
            self.kind = "conv1d"
        else:
            raise TypeError(f"cannot quantize {type(module).__name__}")
        if self.kind != "linear" and module.padding_mode != "zeros":  # type: ignore[union-attr]
            raise UserInputError(
                f"Convolutions with padding_mode={module.padding_mode!r} are kept float; "  # type: ignore[union-attr]
                "override this layer with None in the config."
            )
        self.config = config
        self.weight = nn.Parameter(module.weight.detach().clone().float())
        b = getattr(module, "bias", None)
        self.bias = nn.Parameter(b.detach().clone().float()) if b is not None else None
        if self.kind != "linear":
            self.stride = tuple(module.stride)  # type: ignore[union-attr]
            self.padding = module.padding  # type: ignore[union-attr]
            self.dilation = tuple(module.dilation)  # type: ignore[union-attr]
            self.groups = int(module.groups)  # type: ignore[union-attr]
        n_out = self.weight.shape[0]
        w_shape = (n_out,) if config.weight.granularity == "per_channel" else ()
        self.register_buffer("w_scale", torch.ones(w_shape))
        self.register_buffer("w_zero_point", torch.zeros(w_shape, dtype=torch.int32))
        self.register_buffer("a_scale", torch.ones(()))
        self.register_buffer("a_zero_point", torch.zeros((), dtype=torch.int32))
        self.mode = "simulate"
        self.backend = "auto"
        self._codes_cache: tuple[tuple[int, int, int], QuantizedWeight] | None = None

    # ---- quantization parameters --------------------------------------------------------
    @property
    def w_qrange(self) -> tuple[int, int]:
        return weight_qrange(self.config.weight)

    @property
    def a_qrange(self) -> tuple[int, int] | None:
        act = self.config.activation
        return None if act is None else act_qrange(act)

    def set_weight_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        with torch.no_grad():
            self.w_scale.copy_(scale.reshape(self.w_scale.shape))
            self.w_zero_point.copy_(zero_point.reshape(self.w_zero_point.shape))

    def set_act_qparams(self, scale: torch.Tensor | float, zero_point: torch.Tensor | int) -> None:
        with torch.no_grad():
            self.a_scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
            self.a_zero_point.copy_(torch.as_tensor(zero_point, dtype=torch.int32))

    def _w_axis(self) -> int | None:
        return 0 if self.w_scale.dim() == 1 else None

    def quantized_weight(self) -> QuantizedWeight:
        """Integer codes of the current weight (cached; recomputed when it changes)."""
        key = (self.weight._version, self.w_scale._version, self.w_zero_point._version)
        if self._codes_cache is not None and self._codes_cache[0] == key:
            return self._codes_cache[1]
        lo, hi = self.w_qrange
        with torch.no_grad():
            codes = quantize(self.weight, self.w_scale, self.w_zero_point, lo, hi, self._w_axis())
        qw = QuantizedWeight(
            codes.to(torch.int8), self.config.weight.bits, self.w_scale.clone(), self.w_zero_point.clone()
        )
        self._codes_cache = (key, qw)
        return qw

    def fake_quant_weight(self) -> torch.Tensor:
        lo, hi = self.w_qrange
        return fake_quantize(self.weight, self.w_scale, self.w_zero_point, lo, hi, self._w_axis())

    def fake_quant_input(self, x: torch.Tensor) -> torch.Tensor:
        r = self.a_qrange
        if r is None:
            return x
        return fake_quantize(x, self.a_scale, self.a_zero_point, r[0], r[1])

    # ---- execution ----------------------------------------------------------------------
    def _float_op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return F.linear(x, w, self.bias)
        conv = F.conv2d if self.kind == "conv2d" else F.conv1d
        return conv(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "float":
            return self._float_op(x, self.weight)
        if self.mode == "simulate" or self.a_qrange is None:
            # Weight-only layers run as float GEMMs over dequantized weights.
            return self._float_op(self.fake_quant_input(x), self.fake_quant_weight())
        return self._integer_forward(x)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Activation codes of ``x`` as uint8 (unsigned grids) or int8 (signed grids)."""
        lo, hi = self.a_qrange  # type: ignore[misc]
        q = quantize(x, self.a_scale, self.a_zero_point, lo, hi)
        return q.to(torch.uint8 if lo >= 0 else torch.int8)

    def _integer_forward(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = x.dtype if x.dtype in (torch.float32, torch.bfloat16) else torch.float32
        qx = self.quantize_input(x)
        qw = self.quantized_weight()
        sx, zx = float(self.a_scale), int(self.a_zero_point)
        if self.kind == "linear":
            return kernels.linear(qx, sx, zx, qw, self.bias, None, out_dtype, self.backend)
        padding = self.padding
        if isinstance(padding, str):
            qx, padding = self._explicit_padding(qx, zx)
        if self.kind == "conv2d":
            return kernels.conv2d(qx, sx, zx, qw, self.bias, self.stride, tuple(padding),
                                  self.dilation, self.groups, None, out_dtype, self.backend)
        return kernels.conv1d(qx, sx, zx, qw, self.bias, self.stride[0], padding[0],
                              self.dilation[0], self.groups, None, out_dtype, self.backend)

    def _explicit_padding(self, qx: torch.Tensor, zx: int) -> tuple[torch.Tensor, tuple[int, ...]]:
        # padding="valid" / "same": pad with the zero point's code (float 0.0) up front.
        spatial = self.weight.shape[2:]
        if self.padding == "valid":
            return qx, (0,) * len(spatial)
        pads: list[int] = []
        for k, d in zip(reversed(spatial), reversed(self.dilation), strict=True):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        padded = F.pad(qx.to(torch.int32), pads, value=zx).to(qx.dtype)
        return padded, (0,) * len(spatial)

    # ---- reporting ----------------------------------------------------------------------
    def size_bytes(self) -> int:
        """Stored bytes: packed weight codes, scales / zero points, float bias."""
        qw_bytes = self.quantized_weight().packed_nbytes() if self.mode != "float" else self.weight.numel() * 4
        meta = self.w_scale.numel() * 4 + (0 if self.config.weight.symmetric else self.w_zero_point.numel())
        bias = self.bias.numel() * 4 if self.bias is not None else 0
        return qw_bytes + meta + bias + 8  # + activation scale and zero point

    def extra_repr(self) -> str:
        return f"{self.kind}, {self.config.short_name}, mode={self.mode}, weight={tuple(self.weight.shape)}"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "config": self.config.short_name, "mode": self.mode}
