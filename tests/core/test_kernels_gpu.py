"""The Triton CUDA backend against the reference oracle (``-m gpu``; skipped without CUDA).

Both kernels run: the persistent TMA kernel (Hopper and newer, aligned rows) and the
plain pointer kernel (any shape). Autotuning is trimmed to one config per kernel here
(every flag combination would otherwise compile every config); ``test_autotuned_*``
runs the full config list once.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from quantune import kernels
from quantune.kernels.weights import QuantizedWeight

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton"),
]

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9
KERNELS = ["plain", pytest.param("tma", marks=pytest.mark.skipif(not HOPPER, reason="TMA needs sm_90+"))]


@pytest.fixture(autouse=True)
def one_config(request):
    """Trim each kernel's autotune list to one config (restored afterwards)."""
    from quantune.kernels import triton_gemm

    if request.node.name.startswith("test_autotuned"):
        yield
        return
    saved = {}
    for kern in (triton_gemm.int8_gemm_kernel, triton_gemm.int8_gemm_tma_kernel):
        saved[kern] = (kern.configs, dict(kern.cache))
        kern.configs = [c for c in kern.configs if c.kwargs["BLOCK_M"] == 64 and not c.kwargs.get("SWAP_AB")][:1]
        kern.cache.clear()
    yield
    for kern, (configs, cache) in saved.items():
        kern.configs = configs
        kern.cache.clear()
        kern.cache.update(cache)


def _weight(n, k, bits, device="cuda", seed=0, unit_scale=False) -> QuantizedWeight:
    g = torch.Generator().manual_seed(seed)
    hi = (1 << (bits - 1)) - 1
    codes = torch.randint(-hi, hi + 1, (n, k), generator=g, dtype=torch.int8)
    scale = torch.ones(n) if unit_scale else torch.rand(n, generator=g) * 0.02 + 0.001
    return QuantizedWeight(codes.to(device), bits, scale.to(device), torch.zeros(n, dtype=torch.int32, device=device))


def _triton_linear(qx, x_scale, zx, w, bias=None, act=None, out_dtype=torch.float32, kernel="auto", **kw):
    from quantune.kernels import cuda_backend
    from quantune.kernels.dispatch import _epilogue

    epi = _epilogue(act, out_dtype, kw.get("out_scale", 1.0), kw.get("out_zero_point", 0))
    return cuda_backend.linear(qx, x_scale, zx, w, bias, epi, kernel)


SHAPES = [(1, 7, 5), (1, 64, 33), (17, 130, 40), (33, 256, 129), (128, 512, 256), (5, 4096, 64), (300, 96, 24)]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("act_dtype", [torch.uint8, torch.int8])
def test_accumulators_bit_exact(kernel, shape, bits, act_dtype):
    m, k, n = shape
    if kernel == "tma" and k % 16:
        pytest.skip("TMA needs 16-byte aligned rows")
    w = _weight(n, k, bits, unit_scale=True)
    if act_dtype == torch.uint8:
        qx, zx = torch.randint(0, 256, (m, k), dtype=torch.uint8, device="cuda"), 77
    else:
        qx, zx = torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda"), -51
    ref = kernels.linear(qx, 1.0, zx, w, backend="reference")
    out = _triton_linear(qx, 1.0, zx, w, kernel=kernel)
    assert torch.equal(out, ref)  # |acc| < 2^24 here, so fp32 holds it exactly


def test_extreme_codes_do_not_overflow():
    # -128 activations (zero point 127) x -127 weights over K = 4096: |acc| ~ 2^26, exact
    # in int32; compared as int64-exact float64 sums through unit scales and fp32 out.
    k = 4096
    qx = torch.full((4, k), -128, dtype=torch.int8, device="cuda")
    w = QuantizedWeight(torch.full((32, k), -127, dtype=torch.int8, device="cuda"), 8,
                        torch.ones(32, device="cuda"), torch.zeros(32, dtype=torch.int32, device="cuda"))
    for kernel in ["plain"] + (["tma"] if HOPPER else []):
        out = _triton_linear(qx, 1.0, 127, w, kernel=kernel)
        assert torch.all(out == float((-128 - 127) * -127 * k)), kernel


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("act", [None, "relu", "relu6", "clamp:-0.5:0.75", "gelu"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.uint8, torch.int8])
def test_epilogue_matches_reference(kernel, act, out_dtype):
    w = _weight(48, 96, 8)
    qx = torch.randint(0, 256, (3, 9, 96), dtype=torch.uint8, device="cuda")
    bias = torch.randn(48, device="cuda")
    kw = dict(out_scale=0.03, out_zero_point=5 if out_dtype == torch.uint8 else -3)
    ref = kernels.linear(qx, 0.02, 120, w, bias, act, out_dtype, "reference", **kw)
    out = _triton_linear(qx, 0.02, 120, w, bias, act, out_dtype, kernel, **kw)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    if out_dtype in (torch.uint8, torch.int8):
        assert (out.int() - ref.int()).abs().max() <= 1
    else:
        torch.testing.assert_close(out.float(), ref.float(), rtol=1e-2 if out_dtype == torch.bfloat16 else 1e-5, atol=1e-4)


def test_int4_weights_are_unpacked_in_kernel():
    w = _weight(64, 100, 4)
    kernels.linear(torch.zeros(2, 100, dtype=torch.uint8, device="cuda"), 1.0, 0, w, backend="triton")
    prep = w.backend_cache[("triton", "cuda:0")]
    assert prep["packed4"] and prep["w"].shape == (64, 50)


def test_conv2d_lowering_bit_exact():
    codes = torch.randint(-127, 128, (8, 6, 3, 3), dtype=torch.int8, device="cuda")
    w = QuantizedWeight(codes, 8, torch.ones(8, device="cuda"), torch.zeros(8, dtype=torch.int32, device="cuda"))
    qx = torch.randint(0, 256, (2, 6, 9, 9), dtype=torch.uint8, device="cuda")
    args = (None, (2, 2), (1, 1), (1, 1), 1)
    ref = kernels.conv2d(qx, 1.0, 11, w, *args, backend="reference")
    out = kernels.conv2d(qx, 1.0, 11, w, *args, backend="triton")
    assert torch.equal(out, ref)


def test_auto_uses_triton_on_cuda():
    w = _weight(16, 32, 8)
    assert kernels.dispatch.selected_backend("linear", torch.zeros(1, 32, dtype=torch.uint8, device="cuda"), w) == "triton"


def test_auto_picks_tma_only_where_eligible():
    from quantune.kernels import triton_gemm

    x = torch.zeros(8, 64, dtype=torch.int8, device="cuda")
    w = torch.zeros(16, 64, dtype=torch.int8, device="cuda")
    assert triton_gemm.tma_eligible(x, w) == HOPPER
    assert not triton_gemm.tma_eligible(torch.zeros(8, 7, dtype=torch.int8, device="cuda"), w[:, :7])


def test_autotuned_kernels_match_reference():
    """The full config lists (every tile shape a large GEMM may pick) stay exact."""
    w = _weight(1024, 1024, 8, unit_scale=True)
    qx = torch.randint(-128, 128, (512, 1024), dtype=torch.int8, device="cuda")
    ref = kernels.linear(qx, 1.0, 3, w, backend="reference")
    for kernel in ["plain"] + (["tma"] if HOPPER else []):
        out = _triton_linear(qx, 1.0, 3, w, kernel=kernel)
        assert torch.equal(out, ref), kernel


def test_cuda_graph_capture_replays_the_fused_gemm():
    """The backend launches without host syncs once warm, so serving code can graph it."""
    w = _weight(256, 512, 8)
    qx = torch.randint(-128, 128, (64, 512), dtype=torch.int8, device="cuda")
    eager = kernels.linear(qx, 0.02, 0, w, out_dtype=torch.bfloat16)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = kernels.linear(qx, 0.02, 0, w, out_dtype=torch.bfloat16)
    qx.copy_(torch.randint(-128, 128, (64, 512), dtype=torch.int8, device="cuda"))
    graph.replay()
    torch.testing.assert_close(captured, kernels.linear(qx, 0.02, 0, w, out_dtype=torch.bfloat16))
    assert not torch.equal(captured, eager)


def test_auto_kernel_choice_is_measured_once_per_shape():
    from quantune.kernels import triton_gemm

    w = _weight(192, 256, 8)
    qx = torch.randint(-128, 128, (40, 256), dtype=torch.int8, device="cuda")
    before = dict(triton_gemm._MEASURED_CHOICE)
    out = _triton_linear(qx, 0.02, 0, w)
    new = {k: v for k, v in triton_gemm._MEASURED_CHOICE.items() if k not in before}
    if HOPPER:
        assert len(new) == 1 and set(new.values()) <= {"tma", "plain"}
    else:
        assert not new  # no TMA: nothing to choose
    torch.testing.assert_close(out, kernels.linear(qx, 0.02, 0, w, backend="reference"))


@pytest.mark.skipif(not HOPPER, reason="TMA needs sm_90+")
@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("shape", [(1, 64, 96), (70, 320, 130)])
def test_int4_tma_direct_and_swapped_products_are_exact(swap, shape):
    from quantune.kernels import triton_gemm

    kern = triton_gemm.int8_gemm_tma_kernel
    kern.configs = [c for c in triton_gemm._tma_configs()
                    if c.kwargs["SWAP_AB"] == swap and c.kwargs["BLOCK_M"] == 64 and c.kwargs["BLOCK_N"] == 64]
    kern.cache.clear()
    m, k, n = shape
    w = _weight(n, k, 4, unit_scale=True)
    qx = torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda")
    out = _triton_linear(qx, 1.0, -9, w, kernel="tma")
    assert kern.best_config.kwargs["SWAP_AB"] == swap
    assert torch.equal(out, kernels.linear(qx, 1.0, -9, w, backend="reference"))
