"""Weights prepacked once for oneDNN's int8 primitives (cached on the weight).

oneDNN wants symmetric int8 weights (no weight zero point), per-output-channel float
scales, and its own blocked layout (``qlinear_prepack`` / ``qconv_prepack``). Packing
happens on the first call and lives in ``QuantizedWeight.backend_cache``.

Two numerics details are handled here, once, instead of in every call:

- Asymmetric weights of up to 7 bits are centred (``w - zw`` fits int8), so the kernel
  sees a symmetric weight and the accumulator is unchanged.
- On CPUs whose u8 x s8 kernel saturates pair sums to int16 (AVX2 without VNNI, see
  :mod:`quantune.kernels.cpu_caps`), a weight with ``|w| > 64`` is split into
  ``w = main + extra`` with ``main = clamp(w, -64, 64)``: both parts are
  saturation-free, and their two GEMMs add up to the exact accumulator. The split costs
  a second GEMM, so it is only built where it is needed; int4 / int2 weights and CPUs
  with VNNI never need it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantune.kernels import cpu_caps
from quantune.kernels.weights import QuantizedWeight

_LIMIT = cpu_caps.SATURATION_SAFE_MAX_ABS_CODE


@dataclass(frozen=True)
class OnednnPack:
    """A weight in oneDNN's packed layout.

    Attributes:
        main: the packed weight (``main`` part when split).
        extra: the packed overflow part on saturating CPUs, else None.
        w_scale: float32 ``[N]`` per-channel scales.
        w_zero_point: int64 zeros ``[N]`` (oneDNN's weights are symmetric).
    """

    main: torch.Tensor
    extra: torch.Tensor | None
    w_scale: torch.Tensor
    w_zero_point: torch.Tensor


def centred_codes(weight: QuantizedWeight) -> torch.Tensor | None:
    """``codes - zero_point`` as int8, or None when that does not fit int8."""
    if weight.is_symmetric:
        return weight.codes
    zp_shape = (-1,) + (1,) * (weight.codes.dim() - 1)
    c = weight.codes.to(torch.int16) - weight.per_channel_zero_point().to(torch.int16).reshape(zp_shape)
    if c.numel() and (int(c.min()) < -128 or int(c.max()) > 127):
        return None
    return c.to(torch.int8)


def can_pack(weight: QuantizedWeight) -> bool:
    """Whether oneDNN can run this weight exactly (8-bit asymmetric weights cannot)."""
    key = "onednn_packable"
    if key not in weight.backend_cache:
        weight.backend_cache[key] = centred_codes(weight) is not None
    return weight.backend_cache[key]


def needs_split(weight: QuantizedWeight) -> bool:
    """Whether this weight runs as two GEMMs here (saturating CPU and ``|w| > 64``)."""
    return cpu_caps.u8s8_saturates() and weight.max_abs_code() > _LIMIT


def _split(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not cpu_caps.u8s8_saturates() or int(codes.to(torch.int16).abs().max()) <= _LIMIT:
        return codes, None
    main = codes.clamp(-_LIMIT, _LIMIT)
    return main, (codes.to(torch.int16) - main).to(torch.int8)


def _scales(weight: QuantizedWeight) -> tuple[torch.Tensor, torch.Tensor]:
    n = weight.out_channels
    return weight.per_channel_scale().contiguous(), torch.zeros(n, dtype=torch.int64)


def linear_pack(weight: QuantizedWeight) -> OnednnPack:
    """The weight packed for ``onednn::qlinear_pointwise`` (cached)."""
    cached = weight.backend_cache.get("onednn_linear")
    if cached is not None:
        return cached
    codes = centred_codes(weight)
    if codes is None:
        raise ValueError("8-bit asymmetric weights do not fit oneDNN's symmetric int8 weights")
    main, extra = _split(codes.reshape(weight.out_channels, -1).contiguous())
    w_scale, w_zp = _scales(weight)
    pack = OnednnPack(
        torch.ops.onednn.qlinear_prepack(main, None),
        None if extra is None else torch.ops.onednn.qlinear_prepack(extra, None),
        w_scale,
        w_zp,
    )
    weight.backend_cache["onednn_linear"] = pack
    return pack


def conv_pack(
    weight: QuantizedWeight,
    x_scale: float,
    x_zero_point: int,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> OnednnPack:
    """The weight packed for ``onednn::qconv2d_pointwise`` (cached per geometry).

    ``qconv_prepack`` takes the activation scale and zero point (oneDNN precomputes its
    zero-point compensation from them), so they are part of the cache key.
    """
    key = ("onednn_conv", float(x_scale), int(x_zero_point), stride, padding, dilation, groups)
    cached = weight.backend_cache.get(key)
    if cached is not None:
        return cached
    codes = centred_codes(weight)
    if codes is None:
        raise ValueError("8-bit asymmetric weights do not fit oneDNN's symmetric int8 weights")
    if codes.dim() == 3:  # conv1d weight [Cout, Cin/g, k] -> [Cout, Cin/g, 1, k]
        codes = codes.unsqueeze(2)
    main, extra = _split(codes.contiguous())
    w_scale, w_zp = _scales(weight)

    def pack(c: torch.Tensor) -> torch.Tensor:
        return torch.ops.onednn.qconv_prepack(
            c, w_scale, float(x_scale), int(x_zero_point), list(stride), list(padding),
            list(dilation), int(groups), None,
        )

    result = OnednnPack(pack(main), None if extra is None else pack(extra), w_scale, w_zp)
    weight.backend_cache[key] = result
    return result
