"""What the GEMM core does to the int32 accumulators before it returns.

``y = act(acc * x_scale * w_scale[n] + bias[n])``, returned as float32 / bfloat16, or
requantized to 8-bit codes ``clamp(round(y / out_scale) + out_zero_point)`` for a next
quantized layer (so a chain of integer layers skips its quantize pass).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FLOAT_OUT = (torch.float32, torch.bfloat16)
INT_OUT = (torch.uint8, torch.int8)


@dataclass(frozen=True)
class Epilogue:
    """The fused epilogue of one integer op.

    Attributes:
        activation: None, ``relu``, ``relu6`` or ``clamp:<lo>:<hi>``.
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
        clamp_bounds(self.activation)  # validates the name

    @property
    def requantize(self) -> bool:
        return self.out_dtype in INT_OUT

    @property
    def out_qrange(self) -> tuple[int, int]:
        return (0, 255) if self.out_dtype == torch.uint8 else (-128, 127)


def clamp_bounds(activation: str | None) -> tuple[float, float] | None:
    """``(lo, hi)`` of the activation as a clamp (relu: ``(0, inf)``), None for identity.

    Raises:
        ValueError: unknown activation name.
    """
    if activation is None:
        return None
    if activation == "relu":
        return 0.0, float("inf")
    if activation == "relu6":
        return 0.0, 6.0
    if activation.startswith("clamp:"):
        parts = activation.split(":")
        if len(parts) == 3:
            lo, hi = float(parts[1]), float(parts[2])
            if lo <= hi:
                return lo, hi
    raise ValueError(
        f"Unknown epilogue activation {activation!r}: use None, 'relu', 'relu6' or "
        "'clamp:<lo>:<hi>' with lo <= hi."
    )


def requantize(y: torch.Tensor, epilogue: Epilogue) -> torch.Tensor:
    """Float output -> 8-bit codes (round half to even, as the quantizer does)."""
    lo, hi = epilogue.out_qrange
    q = torch.round(y.float() / epilogue.out_scale) + epilogue.out_zero_point
    return q.clamp_(lo, hi).to(epilogue.out_dtype)
