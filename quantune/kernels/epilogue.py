"""What the GEMM core does to the int32 accumulators before it returns.

``y = act(acc * x_scale * w_scale[n] + bias[n])``, returned as float32 / bfloat16, or
requantized to 8-bit codes ``clamp(round(y / out_scale) + out_zero_point)`` for a next
quantized layer (so a chain of integer layers skips its quantize pass).

Activations: the clamp family (``relu``, ``relu6``, ``clamp:<lo>:<hi>``: idempotent, so
applying one twice is harmless) and GELU (``gelu``: the exact erf form, ``gelu_tanh``:
the tanh approximation; not idempotent, see :mod:`quantune.activation_mark`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

FLOAT_OUT = (torch.float32, torch.bfloat16)
INT_OUT = (torch.uint8, torch.int8)


@dataclass(frozen=True)
class Epilogue:
    """The fused epilogue of one integer op.

    Attributes:
        activation: None, ``relu``, ``relu6``, ``clamp:<lo>:<hi>``, ``gelu`` or ``gelu_tanh``.
        out_dtype: float32 / bfloat16 (dequantized output) or uint8 / int8 (requantized).
        out_scale: scale of the requantized output (8-bit outputs only).
        out_zero_point: zero point of the requantized output (8-bit outputs only).
    """

    activation: str | None = None
    out_dtype: torch.dtype = torch.float32
    out_scale: float = 1.0
    out_zero_point: int = 0

    def __post_init__(self) -> None:
        if self.out_dtype not in FLOAT_OUT + INT_OUT:
            raise ValueError(
                f"out_dtype must be float32, bfloat16, uint8 or int8, got {self.out_dtype}"
            )
        if self.requantize:
            lo, hi = self.out_qrange
            if not lo <= self.out_zero_point <= hi:
                raise ValueError(f"out_zero_point {self.out_zero_point} outside [{lo}, {hi}]")
            if not self.out_scale > 0:
                raise ValueError(f"out_scale must be positive, got {self.out_scale}")
        validate_activation(self.activation)

    @property
    def requantize(self) -> bool:
        return self.out_dtype in INT_OUT

    @property
    def out_qrange(self) -> tuple[int, int]:
        return (0, 255) if self.out_dtype == torch.uint8 else (-128, 127)


#: GELU epilogues: name -> ``approximate`` argument of ``torch.nn.functional.gelu``.
GELU_FORMS = {"gelu": "none", "gelu_tanh": "tanh"}


def validate_activation(activation: str | None) -> None:
    """Raise ValueError for a name the epilogue does not know."""
    if activation is None or activation in GELU_FORMS or activation in ("relu", "relu6"):
        return
    parts = activation.split(":")
    if len(parts) == 3 and parts[0] == "clamp":
        try:
            if float(parts[1]) <= float(parts[2]):
                return
        except ValueError:
            pass
    raise ValueError(
        f"Unknown epilogue activation {activation!r}: use None, 'relu', 'relu6', "
        "'clamp:<lo>:<hi>' with lo <= hi, 'gelu' or 'gelu_tanh'."
    )


def clamp_bounds(activation: str | None) -> tuple[float, float] | None:
    """``(lo, hi)`` of a clamp-family activation (relu: ``(0, inf)``); None for identity and GELU.

    Raises:
        ValueError: unknown activation name.
    """
    validate_activation(activation)
    if activation is None or activation in GELU_FORMS:
        return None
    if activation == "relu":
        return 0.0, float("inf")
    if activation == "relu6":
        return 0.0, 6.0
    _, lo, hi = activation.split(":")
    return float(lo), float(hi)


def apply_activation(y: torch.Tensor, activation: str | None, inplace: bool = False) -> torch.Tensor:
    """The epilogue activation in float (the oracle's, and the fallback of every backend)."""
    approximate = GELU_FORMS.get(activation or "")
    if approximate is not None:
        return F.gelu(y, approximate=approximate)
    bounds = clamp_bounds(activation)
    if bounds is None:
        return y
    lo, hi = bounds
    if lo == 0.0 and hi == float("inf"):
        return y.relu_() if inplace else torch.relu(y)
    return y.clamp_(lo, hi) if inplace else torch.clamp(y, lo, hi)


def requantize(y: torch.Tensor, epilogue: Epilogue) -> torch.Tensor:
    """Float output -> 8-bit codes (round half to even, as the quantizer does)."""
    lo, hi = epilogue.out_qrange
    q = torch.round(y.float() / epilogue.out_scale) + epilogue.out_zero_point
    return q.clamp_(lo, hi).to(epilogue.out_dtype)
