"""Quantized replacements of Linear / Conv1d / Conv2d with three execution modes.

- ``float``: the original float layer (BatchNorm already folded).
- ``simulate``: fake-quant of the input activation and the weight in float
  (differentiable; AdaQuant trains through it).
- ``integer``: the input is quantized to 8-bit codes, the weight codes are integers,
  and the op runs on the integer GEMM core (int32 accumulation, fused dequantize /
  bias epilogue). Its int32 accumulators equal the simulated mode's exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quantune import kernels
from quantune.activation_mark import mark_activated, mark_codes
from quantune.config import ActQuant, LayerQuantConfig, WeightQuant
from quantune.errors import UserInputError
from quantune.input_smoothing import divide_input_channels, input_channel_factors
from quantune.kernels.decide import DECISION_CACHE, PathDecision, measure_paths
from quantune.kernels.dispatch import selected_backend
from quantune.kernels.epilogue import apply_activation
from quantune.kernels.onednn_pack import needs_split
from quantune.kernels.quantize_input import quantize_divided_to_uint8, quantize_to_uint8
from quantune.kernels.weights import QuantizedWeight
from quantune.quantizer import fake_quantize, qrange, quantize, symmetric_qrange

MODES = ("float", "simulate", "integer")


#: Activation dtypes that simulation and float mode compute in float32.
LOW_PRECISION_FLOATS = (torch.bfloat16, torch.float16)


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
        self.config = config
        self.weight = nn.Parameter(module.weight.detach().clone().float())
        b = getattr(module, "bias", None)
        self.bias = nn.Parameter(b.detach().clone().float()) if b is not None else None
        if self.kind != "linear":
            self.stride = tuple(module.stride)  # type: ignore[union-attr]
            self.padding = module.padding  # type: ignore[union-attr]
            self.dilation = tuple(module.dilation)  # type: ignore[union-attr]
            self.groups = int(module.groups)  # type: ignore[union-attr]
            self.padding_mode: str = module.padding_mode  # type: ignore[union-attr]
            #: ``F.pad`` amounts of a reflect / replicate / circular padding, applied to
            #: the input before a convolution that itself pads nothing (``padding`` is
            #: then all zeros). These modes copy input values, so they commute with
            #: smoothing and quantization: the integer path pads the codes alike.
            self.input_padding: tuple[int, ...] | None = None
            if self.padding_mode != "zeros":
                self.input_padding = tuple(module._reversed_padding_repeated_twice)  # type: ignore[union-attr]
                self.padding = (0,) * (self.weight.dim() - 2)
        n_out = self.weight.shape[0]
        w_shape = (n_out,) if config.weight.granularity == "per_channel" else ()
        self.register_buffer("w_scale", torch.ones(w_shape))
        self.register_buffer("w_zero_point", torch.zeros(w_shape, dtype=torch.int32))
        self.register_buffer("a_scale", torch.ones(()))
        self.register_buffer("a_zero_point", torch.zeros((), dtype=torch.int32))
        # SmoothQuant's per-input-channel divisor (already multiplied into ``weight``);
        # a buffer only when the config asks for smoothing, so it is saved and loaded.
        smoothing = config.activation is not None and config.activation.smoothing is not None
        in_channels = self.weight.shape[1] * (1 if self.kind == "linear" else self.groups)
        self.register_buffer("input_smoothing", torch.ones(in_channels) if smoothing else None)
        self._mode = "simulate"
        self._backend = "auto"
        self._codes_cache: tuple[tuple[int, int, int], QuantizedWeight] | None = None
        self._act_cache: tuple[tuple[int, int], tuple[float, int]] | None = None
        self._float_w_cache: tuple[tuple[int, int, int], torch.Tensor] | None = None
        #: How integer mode runs this layer (path, backend, measured latencies), set
        #: on the first integer forward; readable for reports.
        self.integer_decision: PathDecision | None = None
        #: The model's float dtype in integer mode, from the last float input (a chained
        #: consumer receives uint8 codes and answers in it).
        self._float_dtype = torch.float32
        #: Activation applied in the integer epilogue (set by activation fusion).
        self.fused_activation: str | None = None
        #: ``(consumer layer, safe under inference_mode)``: requantize the output to the
        #: consumer's input grid (set by :func:`quantune.activation_fusion.apply_chains`).
        self.chain_target: tuple[QuantizedLayer, bool] | None = None
        #: While set, simulate mode computes with this function's weight instead of the
        #: fake-quantized ``weight`` (see :meth:`substituted_weight`).
        self._weight_source: Callable[[], torch.Tensor] | None = None

    @property
    def backend(self) -> str:
        """Kernel backend of the integer path (``auto`` picks the fastest that supports it)."""
        return self._backend

    @backend.setter
    def backend(self, backend: str) -> None:
        self._backend = backend
        self.integer_decision = None  # re-decided on the next integer forward

    @property
    def mode(self) -> str:
        """``float``, ``simulate`` or ``integer``; switching to integer prepacks the weight."""
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self._mode = mode
        if mode == "integer" and self.a_qrange is not None:
            self.prepack()

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

    def set_input_smoothing(self, scales: torch.Tensor) -> None:
        """Divide input channel ``j`` by ``scales[j]`` before quantization and multiply the
        weights that read it by the same factor (the float product is unchanged)."""
        if self.input_smoothing is None:
            raise UserInputError("This layer's config has no smoothing; set ActQuant(smoothing=alpha) first.")
        scales = scales.detach().to(self.weight.device, torch.float32).reshape(self.input_smoothing.shape)
        if not bool(torch.isfinite(scales).all()) or bool((scales <= 0).any()):
            raise ValueError("smoothing scales must be finite and positive")
        groups = 1 if self.kind == "linear" else self.groups
        with torch.no_grad():
            self.weight.mul_(input_channel_factors(scales / self.input_smoothing, self.weight, groups))
            self.input_smoothing.copy_(scales)

    def smooth_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` divided by the smoothing scales (unchanged without smoothing)."""
        scales = getattr(self, "input_smoothing", None)  # absent on layers pickled before it existed
        if scales is None:
            return x
        return divide_input_channels(x, scales, self.kind)

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

    @contextmanager
    def substituted_weight(self, source: Callable[[], torch.Tensor]) -> Iterator[None]:
        """Inside this context, simulate mode computes with ``source()`` as the dequantized
        weight (called on every forward, so it may be a differentiable function of
        parameters being optimized, as in block reconstruction)."""
        previous, self._weight_source = getattr(self, "_weight_source", None), source
        try:
            yield
        finally:
            self._weight_source = previous

    def fake_quant_weight(self) -> torch.Tensor:
        source = getattr(self, "_weight_source", None)  # absent on layers pickled before it existed
        if source is not None:
            return source()
        lo, hi = self.w_qrange
        return fake_quantize(self.weight, self.w_scale, self.w_zero_point, lo, hi, self._w_axis())

    def fake_quant_input(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's input ``x`` (as it arrives) smoothed and fake-quantized: what the
        (smoothed) weight is applied to."""
        r = self.a_qrange
        if r is None:
            return self.smooth_input(x)
        return fake_quantize(self.smooth_input(x), self.a_scale, self.a_zero_point, r[0], r[1])

    # ---- execution ----------------------------------------------------------------------
    def pad_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the layer's non-zero padding mode applied (unchanged for zero padding).

        A convolution of this layer reads ``pad_input(x)`` with ``padding``; works on
        float inputs and on activation codes alike.
        """
        pads = getattr(self, "input_padding", None)
        if pads is None:
            return x
        return F.pad(x, pads, mode=self.padding_mode)

    def _float_op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return F.linear(x, w, self.bias)
        conv = F.conv2d if self.kind == "conv2d" else F.conv1d
        return conv(self.pad_input(x), w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in LOW_PRECISION_FLOATS and not (self.mode == "integer" and self.a_qrange is not None):
            # A bf16 / fp16 model: its activations are quantized and multiplied in float32
            # (rounding x / s in 8 significant bits would move codes), the output handed
            # back in the model's dtype. The integer path takes bf16 as it is.
            return self.forward(x.float()).to(x.dtype)
        if self.mode == "float":
            return self._float_op(self.smooth_input(x), self.weight)
        if self.mode == "simulate" or self.a_qrange is None:
            # Weight-only layers run as float GEMMs over dequantized weights.
            return self._float_op(self.fake_quant_input(x), self.fake_quant_weight())
        return self._integer_forward(x)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Activation codes of ``x`` as uint8 (unsigned grids) or int8 (signed grids)."""
        lo, hi = self.a_qrange  # type: ignore[misc]
        q = quantize(self.smooth_input(x), self.a_scale, self.a_zero_point, lo, hi)
        return q.to(torch.uint8 if lo >= 0 else torch.int8)

    def _act_params(self) -> tuple[float, int]:
        # Python scalars of the activation qparams, cached: .item() per call adds up
        # over hundreds of layers.
        key = (self.a_scale._version, self.a_zero_point._version)
        if self._act_cache is None or self._act_cache[0] != key:
            self._act_cache = (key, (float(self.a_scale), int(self.a_zero_point)))
        return self._act_cache[1]

    def quantize_input_u8(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Activation codes as uint8 plus their zero point, in few fused in-place passes.

        Signed grids are shifted by +128 (codes and zero point alike), which leaves
        ``q - zero_point`` unchanged: the CPU kernels' fast path wants unsigned codes.
        The arithmetic is :func:`quantize`'s (``round(x / s) + z``, clamped), so the
        codes equal :meth:`quantize_input`'s exactly; large inputs take one fused pass
        (:mod:`quantune.kernels.quantize_input`).
        """
        lo, hi = self.a_qrange  # type: ignore[misc]
        _, zx = self._act_params()
        shift = 128 if lo < 0 else 0
        scales = getattr(self, "input_smoothing", None)
        if scales is not None:  # SmoothQuant's divisor in the same pass
            q = quantize_divided_to_uint8(x, scales, -1 if self.kind == "linear" else 1, self.a_scale,
                                          zx + shift, lo + shift, hi + shift)
        else:
            q = quantize_to_uint8(x, self.a_scale, zx + shift, lo + shift, hi + shift)
        return q, zx + shift

    def prepack(self) -> None:
        """Quantize the weight and pack it for the kernel backend now (not on first use).

        Runs the integer op once on a minimal input, which makes the selected backend
        build and cache its packed layout (``QuantizedWeight.backend_cache``).
        """
        qw = self.quantized_weight()
        sx, zx = self._act_params()
        lo, _ = self.a_qrange  # type: ignore[misc]
        zx_u8 = zx + (128 if lo < 0 else 0)
        with torch.no_grad():
            if self.kind == "linear":
                shape: tuple[int, ...] = (1, self.weight.shape[1])
            else:
                # Large enough for the kernel and for a reflect padding (< the input size).
                reach = max(self.input_padding or (0,))
                spatial = [max(d * (k - 1) + 1, reach + 1) for k, d in zip(self.weight.shape[2:], self.dilation, strict=True)]
                shape = (1, self.weight.shape[1] * self.groups, *spatial)
            qx = torch.full(shape, zx_u8, dtype=torch.uint8, device=self.weight.device)
            self._run_integer(qx, sx, zx_u8, qw, torch.float32)

    def _is_depthwise(self) -> bool:
        return self.kind != "linear" and self.groups > 1 and self.weight.shape[1] == 1

    def _float_weight(self) -> torch.Tensor:
        key = (self.weight._version, self.w_scale._version, self.w_zero_point._version)
        if self._float_w_cache is None or self._float_w_cache[0] != key:
            with torch.no_grad():
                self._float_w_cache = (key, self.fake_quant_weight().detach())
        return self._float_w_cache[1]

    def _integer_forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:  # a chained producer's codes: answer in the dtype the
            model_dtype = getattr(self, "_float_dtype", torch.float32)  # float input had
        else:
            model_dtype = x.dtype if x.is_floating_point() else torch.float32
            self._float_dtype = model_dtype
        # The kernels write float32 or bf16; an fp16 model gets float32 cast at the end.
        out_dtype = model_dtype if model_dtype in (torch.float32, torch.bfloat16) else torch.float32
        qw = self.quantized_weight()
        sx = self._act_params()[0]
        if self.integer_decision is None:
            self.integer_decision = self._decide(x, qw, out_dtype)
        activation = getattr(self, "fused_activation", None)
        chained_in = x.dtype == torch.uint8  # codes of a chained producer, on this layer's grid
        if self.integer_decision.path == "float" and not chained_in:
            # Measured faster: the simulated computation in float (same codes, float
            # accumulation), for a layer too small for the integer kernel to pay off.
            y = self._float_op(self.fake_quant_input(x.float()), self._float_weight()).to(out_dtype)
            y = apply_activation(y, activation, inplace=True)
        else:
            qx, zx = (x, self._act_params()[1]) if chained_in else self.quantize_input_u8(x)
            target = self._live_chain_target()
            if target is not None:
                out_scale, out_zp = target._act_params()
                y = mark_codes(self._run_integer(qx, sx, zx, qw, torch.uint8, activation, out_scale, out_zp),
                               out_zp)
            else:
                y = self._run_integer(qx, sx, zx, qw, out_dtype, activation)
        if y.is_floating_point() and y.dtype != model_dtype:
            y = y.to(model_dtype)
        if activation is not None:
            mark_activated(y, activation)
        return y

    def _live_chain_target(self) -> QuantizedLayer | None:
        """The consumer to hand codes to on this call, if the link holds now."""
        link = getattr(self, "chain_target", None)
        if link is None:
            return None
        target, inference_safe = link
        decision = target.integer_decision
        if target.mode != "integer" or decision is None or decision.path != "integer":
            return None
        if torch.is_inference_mode_enabled() and not inference_safe:
            return None
        return target

    def _decide(self, x: torch.Tensor, qw: QuantizedWeight, out_dtype: torch.dtype) -> PathDecision:
        qx, zx = self.quantize_input_u8(x)
        op = self.kind
        backend = selected_backend(op, qx, qw) if self.backend == "auto" else self.backend
        # Time the integer path against float where it may lose: depthwise layers
        # (memory bound), and weights that need two GEMMs on CPUs without VNNI.
        split = backend == "onednn" and needs_split(qw)
        if not (self._is_depthwise() or split):
            return PathDecision("integer", backend)
        if self.backend != "auto":
            return PathDecision("integer", backend, "pinned")
        # Same geometry, same answer: a search builds this layer once per trial, so the
        # timing is done once per process for each layer shape and input shape.
        geometry = (self.kind, tuple(self.weight.shape), getattr(self, "groups", 1), getattr(self, "stride", None),
                    str(getattr(self, "padding", None)), tuple(x.shape), qw.bits, split, backend, out_dtype)
        cached = DECISION_CACHE.get(geometry)
        if cached is not None:
            return cached
        sx = self._act_params()[0]
        with torch.no_grad():
            decision = measure_paths(
                lambda: self._run_integer(self.quantize_input_u8(x)[0], sx, zx, qw, out_dtype),
                lambda: self._float_op(self.fake_quant_input(x.float()), self._float_weight()),
                backend,
            )
        DECISION_CACHE[geometry] = decision
        return decision

    def _run_integer(self, qx: torch.Tensor, sx: float, zx: int, qw: QuantizedWeight,
                     out_dtype: torch.dtype, activation: str | None = None,
                     out_scale: float | None = None, out_zero_point: int = 0) -> torch.Tensor:
        out = {"out_scale": out_scale, "out_zero_point": out_zero_point}
        if self.kind == "linear":
            return kernels.linear(qx, sx, zx, qw, self.bias, activation, out_dtype, self.backend, **out)
        qx = self.pad_input(qx)
        padding = self.padding
        if isinstance(padding, str):
            qx, padding = self._explicit_padding(qx, zx)
        if self.kind == "conv2d":
            # oneDNN's int8 convolutions run on channels-last; converting the uint8
            # codes costs a quarter of converting the float input.
            qx = qx.contiguous(memory_format=torch.channels_last)
            return kernels.conv2d(qx, sx, zx, qw, self.bias, self.stride, tuple(padding),
                                  self.dilation, self.groups, activation, out_dtype, self.backend, **out)
        return kernels.conv1d(qx, sx, zx, qw, self.bias, self.stride[0], padding[0],
                              self.dilation[0], self.groups, activation, out_dtype, self.backend, **out)

    def zero_padding_amounts(self) -> tuple[int, ...]:
        """``F.pad`` amounts (last dimension first) of the zeros the convolution adds,
        whatever form ``padding`` takes (ints, a tuple, ``"valid"``, ``"same"``)."""
        spatial = self.weight.shape[2:]
        if self.padding == "valid":
            return (0,) * (2 * len(spatial))
        pads: list[int] = []
        if self.padding == "same":  # PyTorch puts the odd one on the right
            for k, d in zip(reversed(spatial), reversed(self.dilation), strict=True):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
        else:
            per_dim = (self.padding,) * len(spatial) if isinstance(self.padding, int) else self.padding
            for p in reversed(per_dim):
                pads += [p, p]
        return tuple(pads)

    def _explicit_padding(self, qx: torch.Tensor, zx: int) -> tuple[torch.Tensor, tuple[int, ...]]:
        # padding="valid" / "same": pad with the zero point's code (float 0.0) up front.
        padded = F.pad(qx.to(torch.int32), self.zero_padding_amounts(), value=zx).to(qx.dtype)
        return padded, (0,) * (self.weight.dim() - 2)

    # ---- reporting ----------------------------------------------------------------------
    def size_bytes(self) -> int:
        """Stored bytes: packed weight codes, scales / zero points, float bias."""
        qw_bytes = self.quantized_weight().packed_nbytes() if self.mode != "float" else self.weight.numel() * 4
        meta = self.w_scale.numel() * 4 + (0 if self.config.weight.symmetric else self.w_zero_point.numel())
        bias = self.bias.numel() * 4 if self.bias is not None else 0
        scales = getattr(self, "input_smoothing", None)
        smoothing = scales.numel() * 4 if scales is not None else 0
        return qw_bytes + meta + bias + smoothing + 8  # + activation scale and zero point

    def __getstate__(self) -> dict[str, Any]:
        # Prepacked backend weights (oneDNN opaque tensors) can be neither pickled nor
        # deep-copied; they are a cache, rebuilt on the next integer forward.
        state = self.__dict__.copy()
        state["_codes_cache"] = None
        return state

    def extra_repr(self) -> str:
        return f"{self.kind}, {self.config.short_name}, mode={self.mode}, weight={tuple(self.weight.shape)}"

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "config": self.config.short_name, "mode": self.mode}
        if self.integer_decision is not None:
            d["integer_decision"] = self.integer_decision.as_dict()
        return d
