"""Integer GEMM benchmark: quantune's core against fp32, torch._int_mm and ONNX Runtime.

Usage::

    python benchmarks/gemm.py --json out.json [--device cuda] [--quick]

Prints a table and writes JSON rows ``{shape: [M, K, N], method, median_ms, gops,
ratio_vs_fp32, min_ms, ratio_vs_fp32_min}`` (ratios are against ``bf16`` on CUDA; the
``min`` columns estimate uncontended times on an oversubscribed machine). Methods of a shape
are timed round-robin in one process (see ``_timing.py``), so ratios are fair on a
shared machine even when absolute times drift. On CUDA every method is timed as
CUDA-graph replays (device time per call, no Python launch overhead; rows say
``cuda_graph``).

CPU methods: ``fp32`` (torch.matmul), ``int_mm_unfused`` (torch._int_mm s8 x s8 then
an eager dequantize + bias), ``quantune_int8_bare`` (unit scales, no bias: the bare
GEMM of our backend, to price the epilogue), ``quantune_int8`` / ``quantune_int7`` /
``quantune_int4`` (per-channel dequantize + bias, fp32 out; weights are a Gaussian
quantized per channel, so int8 codes span [-127, 127]; int7 codes [-63, 63], stored as
int8: the "reduce range" format that CPUs without VNNI run in one GEMM instead of two), and the ONNX Runtime peers ``ort_matmulinteger``
(int32 out, no epilogue) and ``ort_qlinearmatmul`` (requantized uint8 out).

CUDA methods: ``bf16`` (cuBLAS through torch.matmul), ``int_mm_unfused`` (torch._int_mm
then an eager dequantize + bias), ``quantune_int8`` / ``quantune_int4`` (the Triton
backend as dispatched: the persistent TMA kernel on Hopper; bf16 out, per-channel
dequantize + bias fused) and ``quantune_int8_plain`` (the same GEMM on the plain
pointer kernel, an ablation).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import time_cuda_graphs, time_stats  # noqa: E402

from quantune import kernels  # noqa: E402
from quantune.kernels import cpu_caps  # noqa: E402
from quantune.kernels.weights import QuantizedWeight  # noqa: E402

CPU_SHAPES = [(128, 768, 768), (128, 768, 3072), (1024, 1024, 1024), (3136, 576, 64), (16, 4096, 4096)]
CUDA_SHAPES = [(4096, 4096, 4096), (8192, 8192, 8192), (256, 4096, 4096), (32, 4096, 4096), (100352, 576, 64)]


def quantize_weight(w: torch.Tensor, bits: int) -> QuantizedWeight:
    """Symmetric per-channel quantization, as quantune's default weight config does."""
    hi = (1 << (bits - 1)) - 1
    scale = w.abs().amax(dim=1).clamp(min=1e-8) / hi
    codes = torch.clamp(torch.round(w / scale[:, None]), -hi, hi).to(torch.int8)
    return QuantizedWeight(codes, bits, scale, torch.zeros(w.shape[0], dtype=torch.int32))


def ort_methods(qx, qw: QuantizedWeight, x_zp: int) -> dict:
    """ONNX Runtime MatMulInteger / QLinearMatMul sessions on the same codes (or {})."""
    try:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return {}
    m, k = qx.shape
    n = qw.out_channels
    b = numpy_helper.from_array(qw.codes.t().contiguous().numpy(), "B")
    a_zp = numpy_helper.from_array(np.array(x_zp, dtype=np.uint8), "a_zp")
    b_zp = numpy_helper.from_array(np.array(0, dtype=np.int8), "b_zp")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    a_in = helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k])

    def session(node, inits, out_type):
        out = helper.make_tensor_value_info("Y", out_type, [m, n])
        graph = helper.make_graph([node], "g", [a_in], [out], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    mmi = session(helper.make_node("MatMulInteger", ["A", "B", "a_zp", "b_zp"], ["Y"]), [b, a_zp, b_zp], TensorProto.INT32)
    scal = [numpy_helper.from_array(np.array(v, dtype=np.float32), nm) for nm, v in (("a_s", 0.02), ("b_s", float(qw.scale.mean())), ("y_s", 0.05))]
    y_zp = numpy_helper.from_array(np.array(128, dtype=np.uint8), "y_zp")
    qlm = session(helper.make_node("QLinearMatMul", ["A", "a_s", "a_zp", "B", "b_s", "b_zp", "y_s", "y_zp"], ["Y"]),
                  [b, a_zp, b_zp, y_zp, *scal], TensorProto.UINT8)
    a = qx.numpy()
    return {
        "ort_matmulinteger": lambda: mmi.run(None, {"A": a}),
        "ort_qlinearmatmul": lambda: qlm.run(None, {"A": a}),
    }


def cpu_methods(m: int, k: int, n: int) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g)
    bias = torch.randn(n, generator=g)
    qx = torch.randint(0, 256, (m, k), generator=g, dtype=torch.int16).to(torch.uint8)
    qx_s8 = torch.bitwise_xor(qx, 128).view(torch.int8)
    w8, w7, w4 = quantize_weight(w, 8), quantize_weight(w, 7), quantize_weight(w, 4)
    w_bare = QuantizedWeight(w8.codes, 8, torch.ones(n), w8.zero_point)
    mult = w8.scale * 0.02
    w_t = w8.codes.t()
    return {
        "fp32": lambda: torch.matmul(x, w.t()),
        "int_mm_unfused": lambda: torch.addcmul(bias, torch._int_mm(qx_s8, w_t).float(), mult),
        "quantune_int8_bare": lambda: kernels.linear(qx, 1.0, 128, w_bare),
        "quantune_int8": lambda: kernels.linear(qx, 0.02, 128, w8, bias),
        "quantune_int7": lambda: kernels.linear(qx, 0.02, 128, w7, bias),
        "quantune_int4": lambda: kernels.linear(qx, 0.02, 128, w4, bias),
        **ort_methods(qx, w8, 128),
    }


def cuda_methods(m: int, k: int, n: int) -> dict:
    from quantune.kernels import cuda_backend
    from quantune.kernels.epilogue import Epilogue

    dev = "cuda"
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    w = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
    bias = torch.randn(n, device=dev)
    # Signed activation codes with a zero point: the kernel's native input (uint8 codes,
    # which quantune's activation quantizer emits today, cost one extra flip pass).
    qx = torch.randint(-128, 128, (m, k), device=dev, dtype=torch.int8)
    w8 = quantize_weight(w.float().cpu(), 8)
    w4 = quantize_weight(w.float().cpu(), 4)
    for q in (w8, w4):
        q.codes, q.scale, q.zero_point = q.codes.to(dev), q.scale.to(dev), q.zero_point.to(dev)
    mult = w8.scale * 0.02
    w_t = w8.codes.t()
    bf16_out = Epilogue(None, torch.bfloat16)
    methods = {
        "bf16": lambda: torch.matmul(x, w.t()),
        "quantune_int8": lambda: kernels.linear(qx, 0.02, 3, w8, bias, out_dtype=torch.bfloat16),
        "quantune_int4": lambda: kernels.linear(qx, 0.02, 3, w4, bias, out_dtype=torch.bfloat16),
        # Ablation: the same fused GEMM through the plain (non-TMA, non-persistent) kernel.
        "quantune_int8_plain": lambda: cuda_backend.linear(qx, 0.02, 3, w8, bias, bf16_out, "plain"),
    }
    if m > 16:  # torch._int_mm on CUDA needs M > 16
        methods["int_mm_unfused"] = lambda: torch.addcmul(bias, torch._int_mm(qx, w_t).float(), mult).bfloat16()
    return methods


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="write the rows here")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--quick", action="store_true", help="fewer rounds per method")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shapes", nargs="*", help="MxKxN overrides, e.g. 1024x1024x1024")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available; nothing to run.")
        return 1
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes] if args.shapes else (
        CUDA_SHAPES if args.device == "cuda" else CPU_SHAPES)
    base = "bf16" if args.device == "cuda" else "fp32"
    header = {"device": args.device, "threads": args.threads, "torch": torch.__version__}
    if args.device == "cpu":
        header.update(cpu_caps.describe())
    else:
        import triton

        header.update(gpu=torch.cuda.get_device_name(), triton=triton.__version__,
                      timing="CUDA-graph replays, device time per call")
    print(" ".join(f"{k}={v}" for k, v in header.items()))
    rows = []
    for m, k, n in shapes:
        fns = cpu_methods(m, k, n) if args.device == "cpu" else cuda_methods(m, k, n)
        if args.device == "cpu" and "ort_matmulinteger" not in fns and m == shapes[0][0]:
            print("note: onnxruntime/onnx not installed; ORT peers skipped (pip install quantune[peers])")
        if args.device == "cuda":
            stats = time_cuda_graphs(fns, min_rounds=3 if args.quick else 7, budget_s=0.5 if args.quick else 2.0)
        else:
            stats = time_stats(fns, min_rounds=3 if args.quick else 7, budget_s=0.5 if args.quick else 2.0)
        if base not in stats:
            continue
        for method, st in stats.items():
            t, tmin = st["median_ms"], st["min_ms"]
            rows.append({"shape": [m, k, n], "method": method, "median_ms": round(t, 4),
                         "gops": round(2 * m * k * n / t / 1e6, 1),
                         "ratio_vs_fp32": round(stats[base]["median_ms"] / t, 3),
                         "min_ms": round(tmin, 4),
                         "ratio_vs_fp32_min": round(stats[base]["min_ms"] / tmin, 3)})
            if "graph" in st:
                rows[-1]["cuda_graph"] = st["graph"]
            print(f"{m:>6}x{k:<5}x{n:<5} {method:<20} {t:10.3f} ms {rows[-1]['gops']:9.1f} GOPS  "
                  f"x{rows[-1]['ratio_vs_fp32']:<6.2f} (min {tmin:8.3f} ms x{rows[-1]['ratio_vs_fp32_min']:.2f})")
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
