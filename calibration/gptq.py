"""GPTQ: round a weight matrix column by column against its input Hessian.

Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers" (2022), after Optimal Brain Quantization. Rounding each weight to nearest
ignores that the errors of one output row add up through correlated inputs: a
depthwise 3x3 kernel on a smooth image sees nine nearly equal inputs, so what matters
is the rounding error of the kernel's *sum*, which nearest rounding leaves to chance.
GPTQ quantizes one input column at a time and moves the not-yet-quantized columns to
compensate the error just made, optimally for the quadratic loss
``tr(dW H dW^T)`` with ``H = E[x x^T]`` (see :mod:`quantune.calibration.input_hessian`).

The quantization grid (per-channel or per-tensor step sizes, zero points, code range)
is fixed beforehand by the layer's weight range method and is not changed here, so
GPTQ composes with every range method and with bias correction / AdaQuant after it.
"""

from __future__ import annotations

import torch

# Columns processed per lazy-update block (the GPTQ paper's B = 128).
BLOCK = 128


def _round_to_grid(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Nearest grid value of a column ``w`` [rows] with row-wise ``scale``/``zero``."""
    return (torch.clamp(torch.round(w / scale) + zero, lo, hi) - zero) * scale


def _inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``, damping raised until PD."""
    k = h.shape[0]
    mean_diag = float(torch.diagonal(h).mean())
    eye = torch.eye(k, dtype=h.dtype)
    lam = damp
    for _ in range(8):
        factor, info = torch.linalg.cholesky_ex(h + lam * max(mean_diag, 1e-12) * eye)
        if int(info) == 0:
            inv = torch.cholesky_inverse(factor)
            upper, info = torch.linalg.cholesky_ex(inv, upper=True)
            if int(info) == 0:
                return upper
        lam *= 10.0
    raise RuntimeError("GPTQ: the input Hessian stays singular after damping")


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qrange: tuple[int, int],
    *,
    damp: float = 0.01,
    act_order: bool = True,
) -> torch.Tensor:
    """GPTQ-rounded weights, on the given grid, as float (dequantized) values.

    Args:
        weight: ``[rows, K]`` weights (one row per output channel of a group).
        hessian: ``[K, K]`` input second moments ``E[x x^T]``.
        scale: per-row ``[rows]`` or scalar step size.
        zero_point: per-row or scalar zero point.
        qrange: inclusive integer code range.
        damp: diagonal damping as a fraction of the mean diagonal (regularizes H).
        act_order: quantize the columns with the largest ``H_ii`` (most energetic
            inputs) first, while the most columns are left to absorb their error.

    Returns:
        ``[rows, K]`` float32 weights, each exactly a grid value of its row.
    """
    lo, hi = qrange
    w = weight.detach().to(torch.float64).clone()
    h = hessian.detach().to(torch.float64).clone()
    rows, k = w.shape
    s = (scale.reshape(-1, 1) if scale.numel() > 1 else scale.reshape(1, 1)).to(torch.float64).expand(rows, 1)
    z = (zero_point.reshape(-1, 1) if zero_point.numel() > 1 else zero_point.reshape(1, 1)).to(torch.float64)
    z = z.expand(rows, 1)
    dead = torch.diagonal(h) <= 0  # inputs that are always zero: any value is exact
    h[dead, dead] = 1.0
    perm = torch.argsort(torch.diagonal(h), descending=True) if act_order else torch.arange(k)
    w, h = w[:, perm], h[perm][:, perm]
    u = _inverse_cholesky(h, damp)
    q = torch.zeros_like(w)
    for b0 in range(0, k, BLOCK):
        b1 = min(b0 + BLOCK, k)
        wb = w[:, b0:b1].clone()
        err = torch.zeros_like(wb)
        ub = u[b0:b1, b0:b1]
        for j in range(b1 - b0):
            col = wb[:, j : j + 1]
            qcol = _round_to_grid(col, s, z, lo, hi)
            q[:, b0 + j : b0 + j + 1] = qcol
            e = (col - qcol) / ub[j, j]
            wb[:, j:] -= e @ ub[j : j + 1, j:]
            err[:, j : j + 1] = e
        w[:, b1:] -= err @ u[b0:b1, b1:]
    out = torch.empty_like(q)
    out[:, perm] = q
    return out.float()
