"""Bit-allocation benchmark: metric vs average weight bits for uniform, greedy and ILP.

    python benchmarks/allocation.py --json out/allocation.json [--quick] [--models example]

For each model (the bundled example, EfficientNet-Lite0, MiniLM-L6 from
``quantune.zoo``; a model whose packages are missing is skipped with a message) the
sensitivity table is measured once (weights 2/3/4/6/8, activations 8), then every
policy allocates at average weight bits 3, 4, 5, 6 and 8 (and 4.5), and the allocation
is applied with ``quantize`` (simulated integer arithmetic, which gives the integer
path's accumulators exactly) and scored by the entry's evaluator.

Rows: ``model``, ``policy``, ``budget_avg_bits``, ``avg_weight_bits`` (achieved),
``size_bytes`` (deployed model), ``metric_name``, ``metric``, ``predicted_loss``; plus a
PNG of metric vs size per model. Targets printed at the end: ``ilp`` at or above
``uniform`` and ``greedy`` at every budget (strictly at <= 4 bits), and EfficientNet-Lite0
at 4.5 average bits with top-1 agreement >= 97 %.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantune.config import (
    ActQuant,
    CalibrationProcedure,
    LayerQuantConfig,
    QuantConfig,
    WeightQuant,
)
from quantune.errors import QuantuneError
from quantune.prepare import prepare
from quantune.search.allocation import AllocationInfeasibleError, apply_allocation
from quantune.search.allocation_refine import paired_z_scores
from quantune.search.bits_api import AllocationOptions, allocate_bits
from quantune.search.sensitivity_losses import LOSSES

BUDGETS = (3.0, 4.0, 4.5, 5.0, 6.0, 8.0)
POLICIES = ("uniform", "greedy", "ilp")
MODELS = ("example", "efficientnet-lite0", "minilm-l6")
#: The loss proxy (one forward pass per layer and cell) measures what the allocation
#: changes; on 32 samples it takes 1.5 min (EfficientNet-Lite0) to 2.5 min (MiniLM-L6) here.
DEFAULT_PROXY = {"example": "loss", "efficientnet-lite0": "loss", "minilm-l6": "loss"}


def load_entry(name: str, quick: bool, n_eval: int | None = None, n_calib: int | None = None) -> Any:
    """The zoo entry (``n_eval`` / ``n_calib`` override its data sizes), or None (with a
    message) when it cannot be built here."""
    try:
        from quantune import zoo

        return zoo.get(name, "quick" if quick else "full", n_eval=n_eval, n_calib=n_calib)
    except (ImportError, QuantuneError) as exc:
        print(f"[skip] {name}: {exc}", file=sys.stderr)
        return None


def base_config(weight_method: str, procedure: str) -> QuantConfig:
    """The configuration an allocation only changes the widths of: weight range method and
    calibration procedure (``base`` or steps joined by ``+``: gptq, adaquant, bn, biascorr)."""
    return QuantConfig(LayerQuantConfig(WeightQuant(method=weight_method), ActQuant()),
                       procedure=CalibrationProcedure.from_steps(procedure))


def run_model(name: str, entry: Any, proxy: str, max_samples: int, budgets: tuple[float, ...],
              base: QuantConfig | None = None, policies: tuple[str, ...] = POLICIES,
              weight_bits: tuple[int, ...] = (2, 3, 4, 6, 8),
              context_bits: int | None = None, refine: int = 4, loss: str = "auto",
              relinearize: int = 0) -> list[dict[str, Any]]:
    """Every (policy, budget) row of one model; ``base`` sets range methods and procedure."""
    t0 = time.perf_counter()
    prepared = prepare(entry.model, entry.calib_batches)
    # The sensitivities are measured with the weight range method the allocation is applied
    # with (3-bit min/max and 3-bit MSE-clipped weights rank layers very differently).
    options = AllocationOptions(weight_bits=weight_bits, act_bits=(8,), proxy=proxy, max_samples=max_samples,
                                base_config=base, context_bits=context_bits, refine=refine, loss=loss,
                                relinearize=relinearize, show_progress=True)
    metric_name = entry.primary_metric
    float_metric = entry.evaluate(entry.model)[metric_name]
    rows: list[dict[str, Any]] = []
    for budget in budgets:
        samples: dict[str, np.ndarray] = {}  # policy -> primary metric per evaluation sample
        ilp_row: dict[str, Any] | None = None
        for policy in policies:
            row: dict[str, Any] = {"model": name, "policy": policy, "budget_avg_bits": budget,
                                   "metric_name": metric_name, "float_metric": float_metric, "proxy": proxy,
                                   "loss": loss,
                                   "context_bits": context_bits, "refine": refine if policy == "ilp" else None,
                                   "relinearize": relinearize if policy == "ilp" else None,
                                   "procedure": _procedure_label(base)}
            try:
                allocation = allocate_bits(prepared, budget={"avg_bits": budget}, options=options, policy=policy)
            except AllocationInfeasibleError as exc:
                rows.append({**row, "error": str(exc)})
                continue
            qmodel = prepared.quantize(apply_allocation(allocation, base), mode="simulate")
            metrics, per_sample = entry.evaluate_per_sample(qmodel)
            samples[policy] = per_sample.numpy()
            rows.append({**row, "avg_weight_bits": allocation.avg_bits, "size_bytes": qmodel.size_bytes(),
                         "weight_bytes": allocation.size_bytes, "metric": metrics[metric_name],
                         "metrics": metrics, "predicted_loss": allocation.predicted_loss,
                         "bits": allocation.weight_bits,
                         "refinement": allocation.measurement.get("refine"),
                         "relinearization": allocation.measurement.get("relinearize")})
            if policy == "ilp":
                ilp_row = rows[-1]
            print(f"{name:<19} {policy:<8} budget {budget:>4}  avg {allocation.avg_bits:5.2f}  "
                  f"{metric_name} {metrics[metric_name]:.4f}", flush=True)
        if ilp_row is not None:
            ilp_row["paired_z"] = paired_z_against(samples)
    print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def paired_z_against(samples: dict[str, np.ndarray]) -> dict[str, float]:
    """Paired z-score of ``ilp``'s per-sample metric minus each other policy's on the same
    evaluation samples (positive: ilp scores higher; |z| < 2 is within the evaluation set's
    noise). Infinite values (a difference without spread) are written as +-1e9."""
    others = [p for p in samples if p != "ilp"]
    if "ilp" not in samples or not others:
        return {}
    # Row 0 is each baseline, row 1 ilp: z of (ilp - baseline).
    z = {p: float(paired_z_scores(np.stack([samples[p], samples["ilp"]]))[1]) for p in others}
    return {p: max(min(v, 1e9), -1e9) for p, v in z.items()}


def _procedure_label(base: QuantConfig | None) -> str:
    if base is None:
        return "minmax"
    method = base.default.weight.method if base.default is not None else "minmax"
    return method if base.procedure.steps == "base" else f"{method}+{base.procedure.steps}"


def check_targets(rows: list[dict[str, Any]]) -> list[str]:
    """Human-readable verdicts for the issue's targets."""
    lines = []
    by_key = {(r["model"], r["policy"], r["budget_avg_bits"]): r.get("metric") for r in rows}
    z_of = {(r["model"], r["budget_avg_bits"]): r.get("paired_z") or {} for r in rows if r["policy"] == "ilp"}
    for model in sorted({r["model"] for r in rows}):
        worse, not_strict = [], []
        for budget in sorted({r["budget_avg_bits"] for r in rows if r["model"] == model}):
            ilp = by_key.get((model, "ilp", budget))
            others = {p: by_key.get((model, p, budget)) for p in ("uniform", "greedy")}
            others = {p: m for p, m in others.items() if m is not None}
            if ilp is None or not others:
                continue
            best = max(others, key=lambda p: others[p])
            if ilp < others[best]:
                z = z_of.get((model, budget), {}).get(best)
                worse.append(budget if z is None else f"{budget} (paired z vs {best} {z:+.1f})")
            elif budget <= 4 and ilp <= others[best]:
                not_strict.append(budget)
        verdict = "MET" if not worse and not not_strict else "NOT MET"
        lines.append(f"{model}: ilp >= uniform, greedy at every budget, strictly at <= 4 bits: {verdict}"
                     + (f" (below at {worse})" if worse else "") + (f" (tied at {not_strict})" if not_strict else ""))
    eff = by_key.get(("efficientnet-lite0", "ilp", 4.5))
    if eff is not None:
        lines.append(f"efficientnet-lite0 ilp at 4.5 bits: top-1 agreement {eff:.4f} "
                     f"({'MET' if eff >= 0.97 else 'NOT MET'}, target >= 0.97)")
    return lines


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[skip] plot: matplotlib is not installed", file=sys.stderr)
        return
    models = sorted({r["model"] for r in rows if "metric" in r})
    if not models:
        return
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for policy in POLICIES:
            pts = sorted((r["size_bytes"] / 1e6, r["metric"]) for r in rows
                         if r["model"] == model and r["policy"] == policy and "metric" in r)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=policy)
        metric = next(r["metric_name"] for r in rows if r["model"] == model)
        ax.set(title=model, xlabel="model size (MB)", ylabel=metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, type=Path, help="output JSON rows")
    parser.add_argument("--quick", action="store_true", help="zoo 'quick' data sizes, fewer samples")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated zoo names")
    parser.add_argument("--proxy", default=None, help="override the per-model sensitivity proxy")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    parser.add_argument("--budgets", default=",".join(str(b) for b in BUDGETS), help="average weight bits")
    parser.add_argument("--weight-bits", default="2,3,4,6,8", help="candidate weight widths of the allocator")
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated policies")
    parser.add_argument("--weight-method", default="minmax", choices=("minmax", "mse"),
                        help="weight range method of every layer (the allocation sets the widths)")
    parser.add_argument("--procedure", default="base",
                        help="calibration after allocation: base, or steps joined by + (gptq, adaquant, biascorr)")
    parser.add_argument("--context-bits", type=int, default=None,
                        help="loss proxy: measure each layer with the others' weights at this width")
    parser.add_argument("--refine", type=int, default=4,
                        help="ilp: measure this many least-predicted-loss allocations, keep the best (1: off)")
    parser.add_argument("--relinearize", type=int, default=0,
                        help="ilp: rounds of re-measuring the sensitivities around the allocation (0: off)")
    parser.add_argument("--loss", default="auto", choices=LOSSES,
                        help="sensitivity loss (auto: ce with labels, cosine for embeddings, else kl)")
    parser.add_argument("--n-eval", type=int, default=None,
                        help="evaluation inputs per model (default: the zoo preset's; --quick: 48 images)")
    parser.add_argument("--n-calib", type=int, default=None,
                        help="calibration inputs per model, all of them used for the sensitivities "
                             "(default: the zoo preset's, at most 32 with --quick, 256 without)")
    args = parser.parse_args(argv)
    budgets = tuple(float(b) for b in args.budgets.split(",") if b.strip())
    policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    base = base_config(args.weight_method, args.procedure)
    torch.set_num_threads(args.threads)
    max_samples = args.n_calib or (32 if args.quick else 256)
    rows: list[dict[str, Any]] = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        entry = load_entry(name, args.quick, args.n_eval, args.n_calib)
        if entry is None:
            continue
        proxy = args.proxy or DEFAULT_PROXY.get(name, "hessian")
        rows += run_model(name, entry, proxy, max_samples, budgets, base, policies,
                          tuple(int(b) for b in args.weight_bits.split(",") if b.strip()), args.context_bits,
                          args.refine, args.loss, args.relinearize)
        write(args.json, rows, args.quick)  # after each model: a later crash keeps these rows
    verdicts = write(args.json, rows, args.quick)
    print("\n".join(verdicts))
    print(f"json: {args.json}")
    plot(rows, args.json.with_suffix(".png"))
    return 0


def write(path: Path, rows: list[dict[str, Any]], quick: bool) -> list[str]:
    """Write the rows and the target verdicts; returns the verdicts."""
    verdicts = check_targets(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), "quick": quick, "rows": rows,
                                "targets": verdicts}, indent=2) + "\n")
    return verdicts


def machine() -> dict[str, Any]:
    import os
    import platform

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


if __name__ == "__main__":
    sys.exit(main())
