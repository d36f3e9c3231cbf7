"""Autotune pruning and the measured kernel choice of the Triton GEMM.

Pure Python (launchers and timing replaced by fakes): runs without Triton or a GPU.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

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


def test_small_problems_drop_oversized_tiles_but_keep_64_row_mma_tiles():
    kept = triton_gemm._prune_by_shape(PLAIN, {"M": 20, "N": 100})
    assert _tiles(kept) == {(64, 64, None), (32, 128, None), (16, 128, None), (16, 64, None)}
    # Above the 64-row floor the matrix side rules again.
    kept = triton_gemm._prune_by_shape(PLAIN, {"M": 100, "N": 4096})
    assert _tiles(kept) == {(128, 256, None), (64, 64, None), (32, 128, None), (16, 128, None), (16, 64, None)}


def test_large_problems_keep_every_tile():
    assert triton_gemm._prune_by_shape(PLAIN, {"M": 4096, "N": 4096}) == PLAIN


def test_a_side_below_every_tile_keeps_the_smallest_tiles():
    kept = triton_gemm._prune_by_shape(PLAIN, {"M": 1, "N": 1})
    assert _tiles(kept) == {(64, 64, None), (16, 64, None)}


def test_int8_never_swaps_and_keeps_64_row_mma_tiles():
    kept = triton_gemm._prune_tma_configs(TMA, {"M": 4096, "N": 4096}, PACKED4=False)
    assert _tiles(kept) == {(128, 256, False), (256, 128, False), (64, 128, False), (64, 32, False)}


def test_int4_prunes_direct_and_swapped_products_separately():
    # M = 1: direct products keep their smallest 64-row tiles, swapped ones (weights on
    # the MMA's M side, so BLOCK_N >= 64) keep their thin BLOCK_M = 16 tile, and 64 rows.
    kept = triton_gemm._prune_tma_configs(TMA, {"M": 1, "N": 4096}, PACKED4=True)
    assert _tiles(kept) == {(64, 128, False), (64, 32, False), (64, 128, True), (16, 128, True)}


class _FakeTensor:
    """Just what GemmCall.choice_key reads."""

    def __init__(self, rows: int) -> None:
        self.shape = (rows, 64)
        self.device = SimpleNamespace(index=0)
        self.dtype = "bfloat16"


@pytest.fixture
def fresh_choice(monkeypatch):
    """An empty choice cache, and no graph capture in progress (CPU torch cannot ask)."""
    import torch

    monkeypatch.setattr(triton_gemm, "_MEASURED_CHOICE", {})
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)


def _call() -> triton_gemm.GemmCall:
    x, w, out = _FakeTensor(8), _FakeTensor(16), _FakeTensor(8)
    return triton_gemm.GemmCall(x, w, False, 64, None, None, None, out, 1.0, 0, None, 0, 1.0, 0, (-128, 127))


def test_auto_choice_takes_the_faster_kernel_once(monkeypatch, fresh_choice):
    runs: list[str] = []
    monkeypatch.setattr(triton_gemm, "_launch_tma", lambda call: runs.append("tma"))
    monkeypatch.setattr(triton_gemm, "_launch_plain", lambda call: runs.append("plain"))
    monkeypatch.setattr(triton_gemm, "_bench_ms", lambda fn: (fn(), {"tma": 2.0, "plain": 1.0}[runs[-1]])[1])
    assert triton_gemm._choose(_call()) == "plain"
    assert runs == ["tma", "tma", "plain", "plain"]  # each: a compile/tune run, then timed
    assert triton_gemm._choose(_call()) == "plain" and len(runs) == 4  # cached: no new runs


def test_auto_choice_falls_back_when_the_tma_kernel_fails(monkeypatch, fresh_choice):
    def broken(call):
        raise RuntimeError("cannot lower")

    monkeypatch.setattr(triton_gemm, "_launch_tma", broken)
    monkeypatch.setattr(triton_gemm, "_launch_plain", lambda call: None)
    monkeypatch.setattr(triton_gemm, "_bench_ms", lambda fn: 1.0)
    with pytest.warns(RuntimeWarning, match="tma int8 GEMM kernel failed"):
        assert triton_gemm._choose(_call()) == "plain"


def test_auto_choice_raises_when_both_kernels_fail(monkeypatch, fresh_choice):
    def broken(call):
        raise RuntimeError("cannot lower")

    monkeypatch.setattr(triton_gemm, "_launch_tma", broken)
    monkeypatch.setattr(triton_gemm, "_launch_plain", broken)
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="cannot lower"):
        triton_gemm._choose(_call())
