"""End-to-end latency: FP32 eager vs quantune W8A8 (and W7A8) in integer mode.

Usage::

    python benchmarks/e2e.py --json out.json [--models example minilm-l6 ...] [--no-eval]
        [--weight-bits 8,7] [--procedure gptq+biascorr] [--smoothing 0.8]

W7A8 is the x86 "reduce range" format: codes still int8, but |w| <= 63 lets CPUs
without VNNI run one u8 x s8 GEMM instead of two (vpmaddubsw saturates int16 pairs
of 8-bit products; see ``quantune/kernels/onednn_pack.py``).

For each model of the zoo that is installed (the bundled example always is;
EfficientNet-Lite0 and MiniLM-L6 need ``quantune[models]``): quantize with the default
W8A8 config on the entry's calibration batches, then time the float model and the
integer-mode model round-robin in one process (see ``_timing.py``) on the issue's input
sizes (EfficientNet-Lite0: batch 8 x 224 x 224; MiniLM-L6: batch 32 x 128 tokens).
Fidelity (the entry's evaluator) is reported for the integer and the simulated model,
which must agree; the ONNX Runtime int8 model of the same network (``_ort_peer.py``)
runs in the same timing loop when onnxruntime is installed. Rows: ``model``, ``input``,
``fp32_ms``, ``int8_ms``, ``speedup``, ``ort_int8_ms``, ``speedup_ort_int8`` (or
``ort_int8_note``), ``fidelity_integer``, ``fidelity_simulate``, ``integer_paths``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _ort_peer import build_ort_int8  # noqa: E402
from _timing import time_interleaved  # noqa: E402

import quantune  # noqa: E402
from quantune.config import (  # noqa: E402
    ActQuant,
    CalibrationProcedure,
    LayerQuantConfig,
    QuantConfig,
    WeightQuant,
)


def timing_input(name: str, entry: Any) -> tuple[Any, str]:
    """The issue's input size for ``name`` built from the entry's own data."""
    batch = entry.eval_batches[0]
    if name == "efficientnet-lite0":
        x = batch if torch.is_tensor(batch) else batch[0]
        x = x.repeat((8 + x.shape[0] - 1) // x.shape[0], 1, 1, 1)[:8]
        return x, "8x3x224x224"
    if name == "minilm-l6":
        ids, mask = batch["input_ids"], batch["attention_mask"]
        rows = (32 + ids.shape[0] - 1) // ids.shape[0]
        ids, mask = ids.repeat(rows, 1)[:32, :128], mask.repeat(rows, 1)[:32, :128]
        pad = 128 - ids.shape[1]
        if pad > 0:  # pad tokens with the mask off: the same work as real tokens
            ids = torch.nn.functional.pad(ids, (0, pad))
            mask = torch.nn.functional.pad(mask, (0, pad))
        return {"input_ids": ids, "attention_mask": mask}, "32x128 tokens"
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    return x, "x".join(str(d) for d in x.shape)


def _call(model: Any, x: Any) -> Any:
    return model(**x) if isinstance(x, dict) else model(x)


def bench_model(name: str, evaluate: bool, budget_s: float, weight_bits: tuple[int, ...] = (8,),
                procedure: str = "base", unfused: bool = False, smoothing: float | None = None) -> dict[str, Any] | None:
    from quantune import zoo

    try:
        entry = zoo.get(name, "quick")
    except Exception as exc:  # a missing optional package or weights: skip, say why
        print(f"{name}: skipped ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
        return None
    proc = CalibrationProcedure.from_steps(procedure)
    prepared = quantune.prepare_model(entry.model, entry.calib_batches, show_progress=False)
    qmodels = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for bits in weight_bits:
            config = QuantConfig(LayerQuantConfig(WeightQuant(bits=bits), ActQuant(smoothing=smoothing)), procedure=proc)
            qmodels[bits] = prepared.quantize(config, mode="integer")
    x, label = timing_input(name, entry)
    float_model = entry.model.eval()
    fns = {"fp32": lambda: _call(float_model, x)}
    for bits, qm in qmodels.items():
        fns[f"w{bits}a8"] = lambda qm=qm: _call(qm, x)
    plain = {}
    if unfused:  # the same models without activation fusion and chains, timed side by side
        for bits in weight_bits:
            plain[bits] = prepared.quantize(qmodels[bits].config, mode="integer")
            plain[bits].fuse_activations = False
            fns[f"w{bits}a8_unfused"] = lambda qm=plain[bits]: _call(qm, x)
    ort_int8 = build_ort_int8(float_model, entry.calib_batches, x, entry.input_names, torch.get_num_threads())
    if callable(ort_int8):
        fns["ort_int8"] = ort_int8
    with torch.no_grad():
        ms = time_interleaved(fns, min_rounds=5, budget_s=budget_s, warmup=2)
    row: dict[str, Any] = {"model": name, "input": label, "procedure": proc.steps, "smoothing": smoothing,
                           "fp32_ms": round(ms["fp32"], 3)}
    for bits, qm in qmodels.items():
        paths = Counter(
            f"{m.integer_decision.path}:{m.integer_decision.backend}"
            for m in qm.quantized_layers().values() if m.integer_decision is not None
        )
        key = "int8" if bits == 8 else f"w{bits}a8"
        row[f"{key}_ms"] = round(ms[f"w{bits}a8"], 3)
        row["speedup" if bits == 8 else f"speedup_{key}"] = round(ms["fp32"] / ms[f"w{bits}a8"], 3)
        row["integer_paths" if bits == 8 else f"integer_paths_{key}"] = dict(paths)
        row["fused_activations" if bits == 8 else f"fused_activations_{key}"] = len(qm.fused_activations or {})
        row["chains" if bits == 8 else f"chains_{key}"] = len(qm.chains)
        if bits in plain:
            row[f"{key}_unfused_ms"] = round(ms[f"w{bits}a8_unfused"], 3)
        if evaluate:
            with torch.no_grad():
                row["fidelity_integer" if bits == 8 else f"fidelity_integer_{key}"] = entry.evaluate(qm)
                qm.set_mode("simulate")
                row["fidelity_simulate" if bits == 8 else f"fidelity_simulate_{key}"] = entry.evaluate(qm)
                qm.set_mode("integer")
    if "ort_int8" in ms:
        row["ort_int8_ms"] = round(ms["ort_int8"], 3)
        row["speedup_ort_int8"] = round(ms["fp32"] / ms["ort_int8"], 3)
    else:
        row["ort_int8_note"] = ort_int8
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path)
    p.add_argument("--models", nargs="*", default=["example", "efficientnet-lite0", "minilm-l6"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-eval", action="store_true", help="skip the fidelity evaluation")
    p.add_argument("--budget", type=float, default=4.0, help="seconds of timing per model")
    p.add_argument("--weight-bits", default="8,7", help="quantune weight widths to time (A8 each)")
    p.add_argument("--procedure", default="base", help="calibration steps, e.g. gptq+biascorr")
    p.add_argument("--unfused", action="store_true",
                   help="also time each quantized model without activation fusion and chains")
    p.add_argument("--smoothing", type=float, default=None, help="SmoothQuant alpha of the quantune models")
    args = p.parse_args(argv)
    weight_bits = tuple(int(b) for b in args.weight_bits.split(",") if b.strip())
    torch.set_num_threads(args.threads)
    from quantune.kernels import cpu_caps

    header = {"threads": args.threads, "torch": torch.__version__, **cpu_caps.describe()}
    print(" ".join(f"{k}={v}" for k, v in header.items()))
    rows = []
    for name in args.models:
        row = bench_model(name, not args.no_eval, args.budget, weight_bits, args.procedure, args.unfused, args.smoothing)
        if row is None:
            continue
        rows.append(row)
        ort = (f"ort_int8 {row['ort_int8_ms']:9.2f} ms x{row['speedup_ort_int8']:.2f}"
               if "ort_int8_ms" in row else f"ort_int8: {row['ort_int8_note']}")
        quant = "  ".join(
            f"w{b}a8 {row['int8_ms' if b == 8 else f'w{b}a8_ms']:9.2f} ms x{row['speedup' if b == 8 else f'speedup_w{b}a8']:.2f}"
            for b in weight_bits)
        print(f"{name:<20} {row['input']:<14} fp32 {row['fp32_ms']:9.2f} ms  {quant}  {ort}")
        for key, value in row.items():
            if key.startswith(("fidelity_", "integer_paths")):
                print(f"{'':<20} {key}: {value}")
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
