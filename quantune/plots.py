"""PNG plots of a tuning run: convergence, metric vs size, per-layer bit widths."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from quantune.tune_result import TuneResult


def write_plots(result: TuneResult, report: dict[str, Any], out: Path) -> list[str]:
    """Write the plots into ``out``; returns their file names (none without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: no plots (pip install matplotlib).", stacklevel=2)
        return []
    names = []
    done = [t for t in result.trials if t.metric is not None]

    # Convergence: each trial's metric and the best so far.
    fig, ax = plt.subplots(figsize=(6, 3.5))
    best, curve = None, []
    for t in done:
        better = best is None or (t.metric > best if result.higher_is_better else t.metric < best)  # type: ignore[operator]
        best = t.metric if better else best
        curve.append(best)
    ax.scatter([t.number for t in done], [t.metric for t in done], s=12, alpha=0.5, label="trial")
    ax.step([t.number for t in done], curve, where="post", color="C1", label="best so far")
    ax.axhline(result.baseline_metric, color="gray", ls="--", lw=1, label="float")
    ax.set_xlabel("trial")
    ax.set_ylabel(result.metric_name)
    ax.set_title(f"Search convergence ({result.strategy})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "convergence.png", dpi=110)
    plt.close(fig)
    names.append("convergence.png")

    # Metric vs size, Pareto front highlighted.
    sized = [t for t in done if t.size_bytes]
    if sized:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.scatter([t.size_bytes / 1024 for t in sized], [t.metric for t in sized], s=14, alpha=0.5, label="trial")
        front = _front(sized, result.higher_is_better)
        ax.plot([t.size_bytes / 1024 for t in front], [t.metric for t in front], "o-", color="C3", label="Pareto front")
        ax.scatter([result.float_size_bytes / 1024], [result.baseline_metric], marker="*", s=120, color="k", label="float")
        ax.set_xscale("log")
        ax.set_xlabel("model size (KB)")
        ax.set_ylabel(result.metric_name)
        ax.set_title("Metric vs size")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "pareto.png", dpi=110)
        plt.close(fig)
        names.append("pareto.png")

    # Per-layer weight bits of the best configuration.
    layers = report["layers"]
    if layers:
        fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(layers)), 3.5))
        bits = [row["weight_bits"] or 32 for row in layers]
        colors = ["C2" if row["weight_bits"] else "gray" for row in layers]
        ax.bar(range(len(layers)), bits, color=colors)
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels([row["name"] for row in layers], rotation=90, fontsize=6)
        ax.set_ylabel("weight bits (32 = float)")
        ax.set_title("Per-layer weight bit widths")
        fig.tight_layout()
        fig.savefig(out / "layer_bits.png", dpi=110)
        plt.close(fig)
        names.append("layer_bits.png")
    return names


def _front(trials: list[Any], higher_is_better: bool) -> list[Any]:
    """Trials not dominated in (smaller size, better metric), sorted by size."""
    ordered = sorted(trials, key=lambda t: (t.size_bytes, -t.metric if higher_is_better else t.metric))
    front, best = [], None
    for t in ordered:
        if best is None or (t.metric > best if higher_is_better else t.metric < best):
            front.append(t)
            best = t.metric
    return front
