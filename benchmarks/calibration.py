"""Calibration benchmark: range methods, GPTQ, AdaRound, AdaQuant and bias correction on real models.

    python benchmarks/calibration.py --json out.json [--quick] [--models example,efficientnet-lite0]

Rows: ``model, weight_bits, act_bits, method, metric_name, metric, calib_s, peak_rss_mb``.
``method`` is the activation range method, with ``+gptq`` / ``+adaround`` / ``+adaquant`` /
``+biascorr`` where applied, and ``+sq<alpha>`` with SmoothQuant (``--smoothing``). Weights are per-channel (min/max at 8 bits, MSE clipping below
8 bits); low-bit rows keep the first and last quantizable layers at W8A8 (W4A4 always; W4A8
and W7A8 with ``--edges-8bit``, the usual PTQ protocol). ``calib_s`` is the statistics
pass plus the quantization (and calibration steps) of that row; ``peak_rss_mb`` is the
process's peak so far. ``--memory`` adds the memory check: peak RSS of a fresh process
collecting statistics on N and on 4N calibration samples.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import torch

from quantune.config import (
    LAYERWISE_LOSSES,
    ActQuant,
    CalibrationProcedure,
    LayerQuantConfig,
    QuantConfig,
    WeightQuant,
)
from quantune.errors import UserInputError
from quantune.prepare import prepare
from quantune.progress import set_quiet

W8_METHODS = [("minmax", None), ("percentile", 99.99), ("entropy", None), ("mse", None), ("aciq", None)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def layer_cfg(w_bits: int, a_bits: int, method: str, pct: float | None, smoothing: float | str | None = None
              ) -> LayerQuantConfig:
    return LayerQuantConfig(
        WeightQuant(bits=w_bits, method="minmax" if w_bits == 8 else "mse"),
        ActQuant(bits=a_bits, method=method, percentile=pct, smoothing=smoothing),
    )


def make_config(prepared: Any, w_bits: int, a_bits: int, method: str, pct: float | None, proc: CalibrationProcedure,
                edges_8bit: bool = False, smoothing: float | str | None = None) -> QuantConfig:
    cfg = QuantConfig(default=layer_cfg(w_bits, a_bits, method, pct, smoothing), procedure=proc)
    if a_bits < 8 or (edges_8bit and w_bits < 8):  # first and last layers stay at 8 bits
        names = prepared.layer_names
        keep = layer_cfg(8, 8, method, pct, smoothing)
        cfg = cfg.with_overrides({names[0]: keep, names[-1]: keep})
    return cfg


# Procedure rows: "base", or steps joined by "+" (CalibrationProcedure.from_steps; they run
# in the pipeline's order whatever the order written: GPTQ, AdaRound, AdaQuant, then bias correction;
# "@own": layer-wise targets from each layer's own input, see CalibrationProcedure.layerwise_float_target).
LOW_BIT_PROCS = ("base", "biascorr", "gptq", "gptq+biascorr", "adaquant", "adaquant+biascorr",
                 "gptq+adaquant+biascorr", "adaround", "adaround+biascorr", "gptq+adaround", "adaround@own")
W8_PROCS = ("biascorr", "gptq", "gptq+biascorr")


def procedure(key: str, layerwise: dict[str, Any]) -> CalibrationProcedure:
    """The :class:`CalibrationProcedure` of a row key such as ``gptq+biascorr``; a key ending
    in ``@own`` fits AdaRound / AdaQuant to the float layer on its own input."""
    steps, own = key.removesuffix("@own"), key.endswith("@own")
    plain = CalibrationProcedure.from_steps(steps)
    options = {**layerwise, "layerwise_float_target": not own} if plain.adaround or plain.adaquant else {}
    if plain.adaround_blocks:  # block reconstruction fits block outputs with the plain error
        options["layerwise_loss"] = "mse"
    return CalibrationProcedure.from_steps(steps, **options)


def run_model(name: str, args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    from quantune import zoo

    try:
        entry = zoo.get(name, "quick" if args.quick else "full", n_calib=args.n_calib, n_eval=args.n_eval)
    except (UserInputError, ImportError) as exc:
        print(f"skip {name}: {exc}", file=sys.stderr)
        return
    t = time.perf_counter()
    prepared = prepare(entry.model, entry.calib_batches)
    prepared.stats()
    stats_s = time.perf_counter() - t

    def measure(w_bits: int, a_bits: int, method: str, pct: float | None, proc: CalibrationProcedure, label: str,
                smoothing: float | str | None = None) -> float:
        t0 = time.perf_counter()
        q = prepared.quantize(make_config(prepared, w_bits, a_bits, method, pct, proc, args.edges_8bit, smoothing),
                              "simulate")
        label += "" if smoothing is None else f"+sq{smoothing}"
        calib_s = stats_s + time.perf_counter() - t0
        with torch.no_grad():
            metric = float(entry.evaluator(q)[entry.primary_metric])
        row = {
            "model": name, "weight_bits": w_bits, "act_bits": a_bits, "method": label,
            "metric_name": entry.primary_metric, "metric": metric,
            "calib_s": round(calib_s, 2), "peak_rss_mb": round(peak_rss_mb(), 1),
            "edges_8bit": a_bits < 8 or (args.edges_8bit and w_bits < 8), "smoothing": smoothing,
        }
        bias_log = getattr(q, "calibration_log", {}).get("bias_correction")
        if bias_log is not None and "kept" in bias_log:  # the whole-model check's verdict
            row["bias_correction_kept"] = bias_log["kept"]
        if smoothing == "auto":  # how many layers took each alpha ("None": kept unsmoothed)
            row["auto_alphas"] = dict(Counter(str(a) for a in q.smoothing_alphas.values()))
        if proc.adaquant or proc.adaround:
            row["layerwise_holdout"] = proc.layerwise_holdout
            row["layerwise_float_target"] = proc.layerwise_float_target
            row["seed"] = proc.seed
            row["synthetic_samples"] = proc.synthetic_samples
            row["augmented_samples"] = proc.augmented_samples
            row["layerwise_loss"] = proc.layerwise_loss
            synthetic = getattr(q, "calibration_log", {}).get("synthetic")
            if synthetic:  # how well the distillation matched the BatchNorm statistics, and its cost
                row["synthetic_loss"] = [round(synthetic["loss_start"], 4), round(synthetic["loss_end"], 4)]
                row["synthetic_distill_s"] = round(synthetic["distill_seconds"], 1)
        rows.append(row)
        print(f"{name:20s} W{w_bits}A{a_bits} {label:28s} {entry.primary_metric}={metric:.4f} "
              f"calib={calib_s:7.1f}s rss={row['peak_rss_mb']:.0f}MB", flush=True)
        return metric

    base = CalibrationProcedure()
    methods = [(m, p) for m, p in W8_METHODS if m in args.methods.split(",")]
    # Every row is measured without SmoothQuant, then at each --smoothing alpha.
    alphas: list[float | str | None] = [None] + [a if a == "auto" else float(a) for a in args.smoothing.split(",") if a]
    scores = {(m, a): measure(8, 8, m, p, base, m if p is None else f"{m}{p}", a) for m, p in methods for a in alphas}
    best = max(scores, key=lambda m: scores[m])[0]
    pct = dict(W8_METHODS)[best]
    label = best if pct is None else f"{best}{pct}"
    # A budget of 0 means none: every layer runs its full iterations (reproducible on any machine).
    ada = {"adaquant_iters": args.adaquant_iters, "adaquant_time_budget_s": args.adaquant_budget or None,
           "adaround_iters": args.adaround_iters, "layerwise_holdout": args.holdout, "seed": args.seed,
           "synthetic_samples": args.synthetic, "synthetic_iters": args.synthetic_iters,
           "augmented_samples": args.augmented, "layerwise_loss": args.layerwise_loss}

    def lab(key: str) -> str:
        if key == "base":
            return label
        layerwise = procedure(key, ada)
        extra = ""
        if layerwise.adaround or layerwise.adaquant:
            extra += f"+synth{args.synthetic}" if args.synthetic else ""
            extra += f"+aug{args.augmented}" if args.augmented else ""
            extra += f"+{layerwise.layerwise_loss}" if layerwise.layerwise_loss != "mse" else ""
        return f"{label}+{key}{extra}"

    for key in [k for k in args.w8_procs.split(",") if k]:
        for a in alphas:
            measure(8, 8, best, pct, procedure(key, ada), lab(key), a)
    if name not in args.low_bit_models.split(","):
        return
    for w_bits in [int(b) for b in args.low_weight_bits.split(",")]:
        for a_bits in [int(b) for b in args.low_act_bits.split(",")]:
            for key in args.low_bit_procs.split(","):
                for a in alphas:
                    measure(w_bits, a_bits, best, pct, procedure(key, ada), lab(key), a)


class Repeated:
    """A re-iterable calibration set that streams ``times`` noisy copies of some batches.

    It measures what calibration itself holds: the data is produced on the fly, as a
    DataLoader would, so memory growth with the set's size is quantune's own.
    """

    def __init__(self, batches: list[Any], times: int) -> None:
        self.batches, self.times = batches, times

    def __iter__(self):  # type: ignore[no-untyped-def]
        gen = torch.Generator().manual_seed(0)
        for _ in range(self.times):
            for b in self.batches:
                if torch.is_tensor(b) and b.is_floating_point():
                    yield b + 0.01 * torch.randn(b.shape, generator=gen)
                else:
                    yield b


def memory_child(name: str, n_calib: int, times: int) -> None:
    """(subprocess) collect statistics on ``times`` x ``n_calib`` streamed samples; print the peak RSS."""
    from quantune import zoo

    entry = zoo.get(name, "quick", n_calib=n_calib)
    before = peak_rss_mb()
    prepared = prepare(entry.model, Repeated(entry.calib_batches, times))
    prepared.stats()
    print(json.dumps({"n_calib": n_calib * times, "peak_rss_mb": peak_rss_mb(), "before_mb": before}))


def memory_check(name: str, n: int) -> dict[str, Any]:
    """Peak RSS of statistics collection streamed from a generator of N vs 4N samples."""
    out = {}
    for times in (1, 4):
        res = subprocess.run(
            [sys.executable, __file__, "--memory-child", name, str(n), str(times)],
            capture_output=True, text=True, check=True,
        )
        out[n * times] = json.loads(res.stdout.strip().splitlines()[-1])
    growth = out[4 * n]["peak_rss_mb"] / out[n]["peak_rss_mb"] - 1.0
    print(f"memory {name}: peak RSS {out[n]['peak_rss_mb']:.0f} MB (N={n}) -> "
          f"{out[4 * n]['peak_rss_mb']:.0f} MB (4N): {100 * growth:+.1f}%")
    return {"model": name, "n": n, "peak_rss_n_mb": out[n]["peak_rss_mb"],
            "peak_rss_4n_mb": out[4 * n]["peak_rss_mb"], "growth": growth}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write rows here")
    ap.add_argument("--quick", action="store_true", help="small data sizes")
    ap.add_argument("--models", default="example,efficientnet-lite0,minilm-l6")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--adaquant-budget", type=float, default=120.0,
                    help="layer-wise calibration (AdaQuant, AdaRound) seconds per row; 0: no budget")
    ap.add_argument("--edges-8bit", action="store_true",
                    help="keep the first and last layers at W8A8 in the W4A8 / W7A8 rows too")
    ap.add_argument("--adaround-iters", type=int, default=1000, help="AdaRound steps per layer")
    ap.add_argument("--adaquant-iters", type=int, default=100, help="AdaQuant steps per layer")
    ap.add_argument("--holdout", type=float, default=CalibrationProcedure().layerwise_holdout,
                    help="share of calibration samples held out of AdaRound / AdaQuant to check each layer")
    ap.add_argument("--seed", type=int, default=CalibrationProcedure().seed,
                    help="seed of layer-wise calibration (minibatches, windows, held-out split)")
    ap.add_argument("--synthetic", type=int, default=0,
                    help="inputs distilled from BatchNorm statistics added to AdaRound / AdaQuant's data")
    ap.add_argument("--synthetic-iters", type=int, default=CalibrationProcedure().synthetic_iters,
                    help="distillation steps per batch of synthetic inputs")
    ap.add_argument("--augmented", type=int, default=0,
                    help="augmented copies of the calibration images added to AdaRound / AdaQuant's data")
    ap.add_argument("--layerwise-loss", choices=LAYERWISE_LOSSES, default="mse",
                    help="output error of AdaRound / AdaQuant: mse, or fisher (weighted by the squared gradient of "
                         "the float model's top-1 cross-entropy; block reconstruction keeps mse)")
    ap.add_argument("--smoothing", default="",
                    help="SmoothQuant alphas, e.g. 0.65,0.8,auto: each row is also measured with each")
    ap.add_argument("--n-calib", type=int, help="calibration samples (default: the preset's)")
    ap.add_argument("--n-eval", type=int, help="evaluation samples (default: the preset's)")
    ap.add_argument("--methods", default=",".join(m for m, _ in W8_METHODS), help="W8A8 range methods")
    ap.add_argument("--low-bit-models", default="example,efficientnet-lite0,minilm-l6",
                    help="models that also get the W4A8 / W4A4 rows")
    ap.add_argument("--low-weight-bits", default="4", help="weight bits of the low-bit rows (e.g. 7,4)")
    ap.add_argument("--low-act-bits", default="8,4", help="activation bits of the W4 rows")
    ap.add_argument("--low-bit-procs", default=",".join(LOW_BIT_PROCS),
                    help=f"W4 rows to run, of {','.join(LOW_BIT_PROCS)}")
    ap.add_argument("--w8-procs", default=",".join(W8_PROCS),
                    help="W8A8 procedure rows (best range method), e.g. gptq,gptq+biascorr; '' for none")
    ap.add_argument("--memory", default="", help="model for the N vs 4N memory check")
    ap.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    set_quiet(True)
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]), int(args.memory_child[2]))
        return
    rows: list[dict[str, Any]] = []
    for name in [m for m in args.models.split(",") if m]:
        run_model(name, args, rows)
    result: dict[str, Any] = {"rows": rows, "machine": f"CPU, {args.threads} thread(s)", "argv": sys.argv[1:]}
    if args.memory:
        result["memory"] = memory_check(args.memory, 64 if args.quick else 256)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
