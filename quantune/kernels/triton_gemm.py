"""Triton int8 GEMM with the fused epilogue, for CUDA tensor cores.

``out[m, n] = epilogue(sum_k (x[m,k] - zx) * w[n,k])`` with

- activations: uint8 codes ``[M, K]``; the kernel shifts them to int8 (``x - 128``) for
  the s8 x s8 tensor-core MMA and folds the zero point into a per-column correction
  ``- (zx - 128) * wsum[n]``, with ``wsum[n] = sum_k w[n,k]`` precomputed once per
  weight (the weight row-sum correction), so no extra pass over the activations;
- weights: K-major ``[N, K]`` int8 (nn.Linear's layout; measured ~3.4x faster than
  ``[K, N]`` for this kernel on H100), or int4 packed two per byte ``[N, ceil(K/2)]``
  (low nibble = even k), unpacked in registers tile by tile;
- epilogue: ``acc * (x_scale * w_scale[n]) + bias[n]``, clamp (ReLU / ReLU6 / clamp),
  then bf16 / fp32 out, or requantized 8-bit codes (round half to even).

The module imports without Triton (``KERNEL_AVAILABLE`` is False then).
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl

    try:
        from triton.language.extra import libdevice
    except ImportError:  # older Triton
        from triton.language.extra.cuda import libdevice  # type: ignore[no-redef]
except ImportError:  # pragma: no cover - exercised on machines without Triton
    triton = None
    tl = None
    libdevice = None

KERNEL_AVAILABLE = triton is not None

# Epilogue output kinds (constexpr switch inside the kernel).
OUT_FLOAT, OUT_REQUANT = 0, 1


def _configs() -> list:
    shapes = [
        # (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages): large tiles for big GEMMs, thin
        # ones for small M (decode-like) and narrow N (conv-as-GEMM) shapes.
        (128, 256, 128, 8, 3),
        (256, 128, 128, 8, 3),
        (128, 128, 128, 4, 4),
        (128, 64, 128, 4, 4),
        (64, 128, 128, 4, 4),
        (64, 64, 256, 4, 3),
        (32, 128, 256, 4, 3),
        (16, 128, 256, 4, 4),
        (16, 64, 512, 4, 3),
    ]
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_warps=w, num_stages=s)
        for m, n, k, w, s in shapes
    ]


if KERNEL_AVAILABLE:

    @triton.autotune(configs=_configs(), key=["M", "N", "K", "PACKED4", "OUT_KIND"])
    @triton.jit
    def int8_gemm_kernel(
        x_ptr, w_ptr, out_ptr, wscale_ptr, wsum_ptr, bias_ptr,
        M, N, K,
        stride_xm, stride_xk, stride_wn, stride_wk, stride_om, stride_on,
        x_scale, x_zp_shifted, clamp_lo, clamp_hi, inv_out_scale, out_zp, q_lo, q_hi,
        HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr, PACKED4: tl.constexpr,
        OUT_KIND: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        # Grouped tile order: GROUP_M row-tiles share each column of weight tiles in L2.
        pid = tl.program_id(0)
        num_m = tl.cdiv(M, BLOCK_M)
        num_n = tl.cdiv(N, BLOCK_N)
        group = GROUP_M * num_n
        first_m = (pid // group) * GROUP_M
        size_m = min(num_m - first_m, GROUP_M)
        pid_m = first_m + (pid % group) % size_m
        pid_n = (pid % group) // size_m

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        mask_m = offs_m < M
        mask_n = offs_n < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + offs_k
            mask_k = ks < K
            # Padding lanes load code 128 (0 after the shift) so they add nothing.
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + ks[None, :] * stride_xk,
                        mask=mask_m[:, None] & mask_k[None, :], other=128)
            xs = (x.to(tl.int16) - 128).to(tl.int8)
            if PACKED4:
                byte = tl.load(w_ptr + offs_n[None, :] * stride_wn + (ks[:, None] // 2) * stride_wk,
                               mask=mask_n[None, :] & mask_k[:, None], other=0)
                nib = (byte.to(tl.int16) >> ((ks[:, None] % 2) * 4)) & 0xF
                w = ((nib ^ 8) - 8).to(tl.int8)  # sign-extend the 4-bit field
            else:
                w = tl.load(w_ptr + offs_n[None, :] * stride_wn + ks[:, None] * stride_wk,
                            mask=mask_n[None, :] & mask_k[:, None], other=0)
            acc += tl.dot(xs, w, out_dtype=tl.int32)

        # Zero-point correction: sum_k (xs - zs) w = sum_k xs w - zs * wsum[n], exact in int32.
        wsum = tl.load(wsum_ptr + offs_n, mask=mask_n, other=0)
        acc = acc - x_zp_shifted * wsum[None, :]
        wscale = tl.load(wscale_ptr + offs_n, mask=mask_n, other=0.0)
        y = acc.to(tl.float32) * (wscale * x_scale)[None, :]
        if HAS_BIAS:
            y += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
        if HAS_CLAMP:
            y = tl.minimum(tl.maximum(y, clamp_lo), clamp_hi)
        out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
        mask = mask_m[:, None] & mask_n[None, :]
        if OUT_KIND == 1:
            q = libdevice.rint(y * inv_out_scale) + out_zp
            q = tl.minimum(tl.maximum(q, q_lo), q_hi)
            tl.store(out_ptrs, q.to(out_ptr.dtype.element_ty), mask=mask)
        else:
            tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=mask)


def launch(x, w, packed4: bool, k: int, wscale, wsum, bias, out, x_scale: float, x_zp: int,
           clamp: tuple[float, float] | None, out_kind: int, out_scale: float, out_zp: int,
           q_range: tuple[int, int]) -> None:
    """Run :func:`int8_gemm_kernel` on ``x [M, K]`` (uint8) and ``w`` into ``out [M, N]``."""
    m = x.shape[0]
    n = w.shape[0]

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    lo, hi = clamp if clamp is not None else (0.0, 0.0)
    int8_gemm_kernel[grid](
        x, w, out, wscale, wsum, bias if bias is not None else wscale,
        m, n, k,
        x.stride(0), x.stride(1), w.stride(0), w.stride(1), out.stride(0), out.stride(1),
        float(x_scale), int(x_zp) - 128, float(lo), float(hi), 1.0 / float(out_scale), float(out_zp),
        float(q_range[0]), float(q_range[1]),
        HAS_BIAS=bias is not None, HAS_CLAMP=clamp is not None, PACKED4=packed4, OUT_KIND=out_kind,
    )
