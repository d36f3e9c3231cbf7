"""Autotune pruning of the Triton GEMM (pure Python: runs without Triton or a GPU)."""

from __future__ import annotations

from types import SimpleNamespace

from quantune.kernels import triton_gemm


def _cfg(m: int, n: int, swap: bool | None = None) -> SimpleNamespace:
    kwargs = {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": 128, "GROUP_M": 8}
    if swap is not None:
        kwargs["SWAP_AB"] = swap
    return SimpleNamespace(kwargs=kwargs)


def _tiles(configs) -> set[tuple]:
    return {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs.get("SWAP_AB")) for c in configs}


PLAIN = [_cfg(m, n) for m, n in [(128, 256), (256, 128), (64, 64), (32, 128), (16, 128), (16, 64)]]
TMA = [_cfg(m, n, s) for s in (False, True) for m, n in [(128, 256), (256, 128), (64, 128), (64, 32), (16, 128)]]


def test_small_problems_drop_oversized_tiles():
    kept = triton_gemm._prune_by_shape(PLAIN, {"M": 20, "N": 100})
    assert _tiles(kept) == {(32, 128, None), (16, 128, None), (16, 64, None)}


def test_large_problems_keep_every_tile():
    assert triton_gemm._prune_by_shape(PLAIN, {"M": 4096, "N": 4096}) == PLAIN


def test_a_side_below_every_tile_keeps_the_smallest_tiles():
    kept = triton_gemm._prune_by_shape(PLAIN, {"M": 1, "N": 1})
    assert _tiles(kept) == {(16, 64, None)}


def test_int8_never_swaps_and_keeps_64_row_mma_tiles():
    kept = triton_gemm._prune_tma_configs(TMA, {"M": 4096, "N": 4096}, PACKED4=False)
    assert _tiles(kept) == {(128, 256, False), (256, 128, False), (64, 128, False), (64, 32, False)}


def test_int4_prunes_direct_and_swapped_products_separately():
    # M = 1: direct products keep their smallest 64-row tiles, swapped ones (weights on
    # the MMA's M side, so BLOCK_N >= 64) keep their thin BLOCK_M = 16 tile.
    kept = triton_gemm._prune_tma_configs(TMA, {"M": 1, "N": 4096}, PACKED4=True)
    assert _tiles(kept) == {(64, 128, False), (64, 32, False), (16, 128, True)}
