"""Triton int8 GEMM with the fused epilogue, for CUDA tensor cores.

``out[m, n] = epilogue(sum_k (x[m,k] - zx) * w[n,k])`` with

- activations: signed int8 codes ``[M, K]`` fed straight to the s8 x s8 tensor-core MMA;
  the zero point is folded into a per-column correction ``- zx * wsum[n]``, with
  ``wsum[n] = sum_k w[n,k]`` precomputed once per weight (the weight row-sum
  correction), so no extra pass over the activations;
- weights: K-major ``[N, K]`` int8 (nn.Linear's layout: Hopper's 8-bit wgmma reads both
  operands K-major), or int4 packed two per byte ``[N, ceil(K/2)]`` (low nibble = even
  k), unpacked in registers tile by tile;
- epilogue: ``acc * (x_scale * w_scale[n]) + bias[n]``, clamp (ReLU / ReLU6 / clamp),
  then bf16 / fp32 out, or requantized 8-bit codes (round half to even).

Two kernels share the tile order and the epilogue:

- :func:`int8_gemm_tma_kernel` (Hopper and newer, rows 16-byte aligned): persistent (one
  program per SM walks the output tiles), operands fetched by the TMA copy engine into
  swizzled shared memory with zero fill past the edges;
- :func:`int8_gemm_kernel`: plain pointer loads with masks, any shape and any GPU.

The module imports without Triton (``KERNEL_AVAILABLE`` is False then).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple

try:
    import triton
    import triton.language as tl

    try:
        from triton.language.extra import libdevice
    except ImportError:  # older Triton
        from triton.language.extra.cuda import libdevice  # type: ignore[no-redef]
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
    except ImportError:  # Triton < 3.4: no host-side tensor descriptors
        TensorDescriptor = None
except ImportError:  # pragma: no cover - exercised on machines without Triton
    triton = None
    tl = None
    libdevice = None
    TensorDescriptor = None

KERNEL_AVAILABLE = triton is not None

# Epilogue output kinds (constexpr switch inside the kernel).
OUT_FLOAT, OUT_REQUANT = 0, 1

# Kernel choice of :func:`launch`.
KERNELS = ("auto", "tma", "plain")


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


def _set_tma_blocks(nargs: dict) -> None:
    """Autotune pre-hook: the descriptors' boxes follow the config's tile sizes."""
    bk = nargs["BLOCK_K"]
    nargs["x_desc"].block_shape = [nargs["BLOCK_M"], bk]
    nargs["w_desc"].block_shape = [nargs["BLOCK_N"], bk // 2 if nargs["PACKED4"] else bk]


def _tma_configs() -> list:
    shapes = [
        # wgmma tiles: 8 warps = two warpgroups of 64 rows each for BLOCK_M >= 128.
        (128, 256, 128, 8, 3, 8),
        (128, 256, 128, 8, 4, 8),
        (128, 256, 64, 8, 4, 8),
        (256, 128, 128, 8, 3, 8),
        (256, 128, 128, 8, 4, 8),
        (128, 256, 128, 8, 3, 16),
        (128, 128, 128, 8, 4, 8),
        (128, 128, 128, 4, 4, 8),
        (128, 64, 128, 4, 5, 8),
        (64, 128, 128, 4, 5, 8),
        (64, 64, 128, 4, 6, 8),
        (64, 32, 128, 4, 6, 8),
        # Swapped int4 products (weights on the MMA's M side): thin BLOCK_M for small M.
        (32, 128, 128, 4, 6, 8),
        (16, 128, 128, 4, 6, 8),
    ]
    # BLOCK_K stays at 128: one 128-byte swizzled TMA box row of int8.
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": g, "SWAP_AB": swap},
                      num_warps=w, num_stages=s, pre_hook=_set_tma_blocks)
        for swap in (False, True)
        for m, n, k, w, s, g in shapes
    ]


#: BLOCK_M tiles up to this size survive pruning whatever M: 64 rows is the smallest tile
#: a Hopper warpgroup MMA (wgmma) runs, and on a small M it can beat a thinner tile that
#: falls back to mma.sync, so the autotuner must still get to measure one. (Unpruned, the
#: plain kernel measured 1.64x bf16 at 32 x 4096 x 4096 on an H200; with 16/32-row tiles
#: only, a later run measured 1.05x.)
MIN_KEPT_BLOCK_M = 64


def _prune_by_shape(configs: list, named_args: dict, **kwargs) -> list:
    """Drop tiles far larger than the problem (they only add compile and tuning time).

    A tile side may exceed the matrix side rounded up to a power of two only where no
    smaller candidate exists (BLOCK_M: or up to :data:`MIN_KEPT_BLOCK_M`); a model's first
    integer forward on a GPU compiles every kept config for each distinct layer shape, so
    this bounds that warm-up.
    """
    kept = list(configs)
    for dim, side, floor in (("M", "BLOCK_M", MIN_KEPT_BLOCK_M), ("N", "BLOCK_N", 1)):
        size = max(1, int(named_args[dim]))
        cap = max(1 << (size - 1).bit_length(), floor, min(c.kwargs[side] for c in kept))
        kept = [c for c in kept if c.kwargs[side] <= cap]
    return kept or configs


def _prune_tma_configs(configs: list, named_args: dict, **kwargs) -> list:
    """Keep configs whose MMA M side (64 rows per warpgroup) is >= 64, then prune by shape.

    That side is BLOCK_M, or BLOCK_N for a swapped product; only int4 weights may swap
    (int8 operands both come from shared memory, where swapping gains nothing). Direct
    and swapped configs are pruned by shape separately: each keeps its own smallest tiles.
    """
    kept = []
    for swap in (False, True) if kwargs.get("PACKED4") else (False,):
        side = "BLOCK_N" if swap else "BLOCK_M"
        group = [c for c in configs if c.kwargs["SWAP_AB"] == swap and c.kwargs[side] >= 64]
        if group:
            kept += _prune_by_shape(group, named_args)
    return kept or configs


if KERNEL_AVAILABLE:

    @triton.jit
    def _tile_coords(tile, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
        # Grouped tile order: GROUP_M row-tiles share each column of weight tiles in L2.
        num_m = tl.cdiv(M, BLOCK_M)
        num_n = tl.cdiv(N, BLOCK_N)
        group = GROUP_M * num_n
        first_m = (tile // group) * GROUP_M
        size_m = min(num_m - first_m, GROUP_M)
        pid_m = first_m + (tile % group) % size_m
        pid_n = (tile % group) // size_m
        return pid_m, pid_n

    @triton.jit
    def _unpack_int4(packed, ROWS: tl.constexpr, COLS: tl.constexpr):
        # Two's-complement nibbles: low = even column, high = odd column; arithmetic
        # shifts of the int8 byte sign-extend each field.
        lo = (packed << 4) >> 4
        hi = packed >> 4
        return tl.reshape(tl.join(lo, hi), (ROWS, COLS))

    @triton.jit
    def _epilogue_store(acc, offs_m, offs_n, M, N, out_ptr, stride_om, stride_on,
                        wscale_ptr, wsum_ptr, bias_ptr, x_scale, x_zp,
                        clamp_lo, clamp_hi, inv_out_scale, out_zp, q_lo, q_hi,
                        HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr, OUT_KIND: tl.constexpr):
        mask_m = offs_m < M
        mask_n = offs_n < N
        # Zero-point correction: sum_k (x - zx) w = sum_k x w - zx * wsum[n], exact in int32.
        wsum = tl.load(wsum_ptr + offs_n, mask=mask_n, other=0)
        acc = acc - x_zp * wsum[None, :]
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

    @triton.autotune(configs=_configs(), key=["M", "N", "K", "PACKED4", "OUT_KIND"],
                     prune_configs_by={"early_config_prune": _prune_by_shape})
    @triton.jit
    def int8_gemm_kernel(
        x_ptr, w_ptr, out_ptr, wscale_ptr, wsum_ptr, bias_ptr,
        M, N, K,
        stride_xm, stride_xk, stride_wn, stride_wk, stride_om, stride_on,
        x_scale, x_zp, clamp_lo, clamp_hi, inv_out_scale, out_zp, q_lo, q_hi,
        HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr, PACKED4: tl.constexpr,
        OUT_KIND: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        pid_m, pid_n = _tile_coords(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        mask_m = offs_m < M
        mask_n = offs_n < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + offs_k
            mask_k = ks < K
            # Padding lanes load code 0 so they add nothing (the zero point is
            # corrected once, in the epilogue, over the true K only).
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + ks[None, :] * stride_xk,
                        mask=mask_m[:, None] & mask_k[None, :], other=0)
            if PACKED4:
                byte = tl.load(w_ptr + offs_n[None, :] * stride_wn + (ks[:, None] // 2) * stride_wk,
                               mask=mask_n[None, :] & mask_k[:, None], other=0)
                w = (byte << (4 - (ks[:, None] % 2) * 4).to(tl.int8)) >> 4  # sign-extended nibble
            else:
                w = tl.load(w_ptr + offs_n[None, :] * stride_wn + ks[:, None] * stride_wk,
                            mask=mask_n[None, :] & mask_k[:, None], other=0)
            acc += tl.dot(x, w, out_dtype=tl.int32)
        _epilogue_store(acc, offs_m, offs_n, M, N, out_ptr, stride_om, stride_on,
                        wscale_ptr, wsum_ptr, bias_ptr, x_scale, x_zp,
                        clamp_lo, clamp_hi, inv_out_scale, out_zp, q_lo, q_hi,
                        HAS_BIAS, HAS_CLAMP, OUT_KIND)

    @triton.autotune(configs=_tma_configs(), key=["M", "N", "K", "PACKED4", "OUT_KIND"],
                     prune_configs_by={"early_config_prune": _prune_tma_configs})
    @triton.jit
    def int8_gemm_tma_kernel(
        x_desc, w_desc, out_ptr, wscale_ptr, wsum_ptr, bias_ptr,
        M, N, K, stride_om, stride_on,
        x_scale, x_zp, clamp_lo, clamp_hi, inv_out_scale, out_zp, q_lo, q_hi,
        NUM_SMS: tl.constexpr,
        HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr, PACKED4: tl.constexpr,
        OUT_KIND: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
        SWAP_AB: tl.constexpr,
    ):
        # Persistent: NUM_SMS programs stride over the output tiles, so the next tile's
        # TMA loads overlap the previous tile's epilogue and no launch wave is left
        # half full. TMA zero-fills boxes past M, N and K: zeros add nothing.
        num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
        k_tiles = tl.cdiv(K, BLOCK_K)
        for tile in tl.range(tl.program_id(0), num_tiles, NUM_SMS, flatten=True):
            pid_m, pid_n = _tile_coords(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
            off_m = pid_m * BLOCK_M
            off_n = pid_n * BLOCK_N
            if PACKED4 and SWAP_AB:
                # Swapped product (out^T = W X^T): the weights unpacked in registers are the
                # MMA's A operand, which wgmma reads from registers; B (the activations)
                # stays in shared memory as TMA wrote it, so nothing goes back to smem.
                # Autotuned against the direct product, which wins at small M.
                acc_t = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.int32)
                for kt in range(k_tiles):
                    x = x_desc.load([off_m, kt * BLOCK_K])
                    w = _unpack_int4(w_desc.load([off_n, kt * (BLOCK_K // 2)]), BLOCK_N, BLOCK_K)
                    acc_t = tl.dot(w, x.T, acc_t, out_dtype=tl.int32)
                acc = tl.trans(acc_t)
            else:
                acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
                for kt in range(k_tiles):
                    x = x_desc.load([off_m, kt * BLOCK_K])
                    if PACKED4:
                        w = _unpack_int4(w_desc.load([off_n, kt * (BLOCK_K // 2)]), BLOCK_N, BLOCK_K)
                    else:
                        w = w_desc.load([off_n, kt * BLOCK_K])
                    acc = tl.dot(x, w.T, acc, out_dtype=tl.int32)
            offs_m = off_m + tl.arange(0, BLOCK_M)
            offs_n = off_n + tl.arange(0, BLOCK_N)
            _epilogue_store(acc, offs_m, offs_n, M, N, out_ptr, stride_om, stride_on,
                            wscale_ptr, wsum_ptr, bias_ptr, x_scale, x_zp,
                            clamp_lo, clamp_hi, inv_out_scale, out_zp, q_lo, q_hi,
                            HAS_BIAS, HAS_CLAMP, OUT_KIND)


@functools.cache
def _sm_count(device_index: int) -> int:
    import torch

    if not torch.cuda.is_available():
        return 4  # Triton's CPU interpreter (TRITON_INTERPRET=1): any small grid
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.cache
def _major_capability(device_index: int) -> int:
    import torch

    return torch.cuda.get_device_capability(device_index)[0]


def tma_eligible(x, w) -> bool:
    """Whether the TMA kernel can run: Hopper+, and every row start 16-byte aligned."""
    if TensorDescriptor is None or not x.is_cuda:
        return False
    if _major_capability(x.device.index or 0) < 9:
        return False
    return all(t.data_ptr() % 16 == 0 and t.stride(1) == 1 and (t.stride(0) * t.element_size()) % 16 == 0
               for t in (x, w))


class GemmCall(NamedTuple):
    """One fused GEMM's operands and epilogue (the arguments of :func:`launch`)."""

    x: Any
    w: Any
    packed4: bool
    k: int
    wscale: Any
    wsum: Any
    bias: Any
    out: Any
    x_scale: float
    x_zp: int
    clamp: tuple[float, float] | None
    out_kind: int
    out_scale: float
    out_zp: int
    q_range: tuple[int, int]

    def choice_key(self) -> tuple:
        """What the faster kernel depends on: device, shape, flags and output dtype."""
        return (self.x.device.index, self.x.shape[0], self.w.shape[0], self.k, self.packed4,
                self.clamp is not None, self.bias is not None, self.out_kind, self.out.dtype)


# GemmCall.choice_key() -> "tma" | "plain", measured on first use (see launch).
_MEASURED_CHOICE: dict[tuple, str] = {}


def launch(x, w, packed4: bool, k: int, wscale, wsum, bias, out, x_scale: float, x_zp: int,
           clamp: tuple[float, float] | None, out_kind: int, out_scale: float, out_zp: int,
           q_range: tuple[int, int], kernel: str = "auto") -> None:
    """Run the GEMM on ``x [M, K]`` (int8 codes, zero point ``x_zp``) and ``w`` into ``out [M, N]``.

    ``kernel``: ``tma``, ``plain``, or ``auto``: where both can run, the first call of each
    (shape, flags, out dtype) times both kernels (each autotuned) and keeps the faster
    one; measured on an H200, TMA wins the large GEMMs.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    call = GemmCall(x, w, packed4, k, wscale, wsum, bias, out, x_scale, x_zp, clamp, out_kind, out_scale, out_zp,
                    q_range)
    if kernel == "auto":
        kernel = _choose(call) if tma_eligible(x, w) else "plain"
    (_launch_tma if kernel == "tma" else _launch_plain)(call)


def _bench_ms(fn: Any) -> float:
    """Device milliseconds of one call (``triton.testing.do_bench``)."""
    return triton.testing.do_bench(fn, warmup=10, rep=50)


def _choose(call: GemmCall) -> str:
    """The faster kernel for this call's key, measured once (see :func:`launch`).

    A kernel that fails here (a Triton build that cannot lower the TMA kernel for this
    GPU or shape, say) is left out with a warning, and the other one is used; if both
    fail, the plain kernel's error is raised.
    """
    import torch

    key = call.choice_key()
    choice = _MEASURED_CHOICE.get(key)
    if choice is None:
        if torch.cuda.is_current_stream_capturing():
            return "tma"  # cannot time inside a graph capture; warm the shape up first
        times: dict[str, float] = {}
        for name, run in (("tma", _launch_tma), ("plain", _launch_plain)):
            try:
                run(call)  # compiles and autotunes this kernel for the shape
            except Exception as exc:  # noqa: BLE001 - any failure: fall back to the other kernel
                if name == "plain" and not times:
                    raise
                warnings.warn(f"quantune: the {name} int8 GEMM kernel failed for M={call.x.shape[0]}, "
                              f"N={call.w.shape[0]}, K={call.k} ({type(exc).__name__}: {exc}); "
                              "using the other kernel", RuntimeWarning, stacklevel=3)
                continue
            times[name] = _bench_ms(lambda run=run: run(call))
        choice = _MEASURED_CHOICE[key] = min(times, key=times.get)
    return choice


def _epilogue_args(call: GemmCall) -> tuple[Any, tuple, dict]:
    lo, hi = call.clamp if call.clamp is not None else (0.0, 0.0)
    scalars = (float(call.x_scale), int(call.x_zp), float(lo), float(hi), 1.0 / float(call.out_scale),
               float(call.out_zp), float(call.q_range[0]), float(call.q_range[1]))
    flags = dict(HAS_BIAS=call.bias is not None, HAS_CLAMP=call.clamp is not None, PACKED4=call.packed4,
                 OUT_KIND=call.out_kind)
    return (call.bias if call.bias is not None else call.wscale), scalars, flags


def _launch_tma(call: GemmCall) -> None:
    m, n = call.x.shape[0], call.w.shape[0]
    bias_arg, scalars, flags = _epilogue_args(call)
    sms = _sm_count(call.x.device.index or 0)
    # Boxes are placeholders here: the autotune pre-hook sets each config's tiles.
    x_desc = TensorDescriptor.from_tensor(call.x, [16, 16])
    w_desc = TensorDescriptor.from_tensor(call.w, [16, 16])

    def grid(meta):
        return (min(sms, triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"])),)

    int8_gemm_tma_kernel[grid](x_desc, w_desc, call.out, call.wscale, call.wsum, bias_arg, m, n, call.k,
                               call.out.stride(0), call.out.stride(1), *scalars, NUM_SMS=sms, **flags)


def _launch_plain(call: GemmCall) -> None:
    x, w, out = call.x, call.w, call.out
    m, n = x.shape[0], w.shape[0]
    bias_arg, scalars, flags = _epilogue_args(call)

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    int8_gemm_kernel[grid](x, w, out, call.wscale, call.wsum, bias_arg, m, n, call.k,
                           x.stride(0), x.stride(1), w.stride(0), w.stride(1), out.stride(0), out.stride(1),
                           *scalars, **flags)
