"""Search-efficiency benchmark: replay measured PTQ landscapes with every strategy.

    python benchmarks/search.py --json out/search.json [--quick] [--plot out/search.png]

Landscapes: the Brevitas PTQ sweep (``brevitas_ptq/RESULTS_TORCHVISION.csv`` in the
shared data folder: 3 ImageNet models x 540 measured configurations). One landscape
per model; its space is the table's configuration columns; an evaluation is a table
lookup of the quantized top-1. Each strategy searches until it evaluates a
configuration within 0.1 points of the landscape's best; the figure of merit is the
number of evaluations that took (median and 90th percentile over seeds).

Strategies: ``xgboost`` (cold start), ``random``, ``grid``, ``genetic``, ``tpe``, and
``xgboost-t``: xgboost with transfer from the two *other* models, each standing for an
earlier tuning run in the same storage (60 of its measured configurations, drawn at
random per seed).

Live landscapes (``benchmarks/search_live.py``): the bundled example and
EfficientNet-Lite0 over small PTQ spaces, evaluated exhaustively once and cached in
``benchmarks/landscapes/``; replayed with ``xgboost``, ``random``, ``grid``,
``genetic`` and ``tpe`` (>= 5 seeds), their wall time being the cached evaluation
times of the visited points plus the sampler's own time. Besides the 0.1-point
target, each live landscape is also replayed at its metric's resolution (one
evaluation sample), since a 0.1-point target is finer than 1 of 500 or 48 samples.

The data folder is ``$QUANTUNE_SHARED_DATA`` or ``../shared/data`` beside the repo;
a missing file skips its landscapes with a message. :func:`run_landscapes` replays
any landscapes.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from quantune.search.replay import Landscape, ReplayRun, replay, summarize

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = ("xgboost", "xgboost-t", "random", "grid", "genetic", "tpe")

# Configuration columns of the Brevitas table (the others are results or versions).
BREVITAS_CONFIG_COLUMNS = (
    "Target backend", "Scale factor type", "Weight bit width", "Act bit width",
    "Bias bit width", "Scaling per output channel", "Act quant type", "Bias corr",
    "Graph eq iterations", "Graph eq merge bias", "Gptq", "Gptq act order",
    "Act quant percentile", "Calibration size", "Calibration batch size",
)
BREVITAS_METRIC = "Top 1% quant accuracy"
# Priors a quantization engineer states before any trial (values least to most precise;
# None: numeric ascending): more weight bits, float scales over powers of two, a 32-bit
# bias over a 16-bit one, per-channel over per-tensor weight scales, and the backend that
# quantizes fewest tensors last: Brevitas documents ``layerwise`` as quantizing only the
# inputs and weights of compute-heavy layers, while ``generic`` also quantizes adds,
# concatenations and activation outputs; ``flexml`` (an internal hardware backend, not
# documented) is placed first, and swapping it with ``generic`` changes no replay median.
# Dimensions whose direction depends on the model (percentile, GPTQ, act order, bias
# correction) get none.
BREVITAS_PRIORS: dict[str, tuple[Any, ...] | None] = {
    "Weight bit width": None,
    "Scale factor type": ("po2", "float32"),
    "Bias bit width": ("int16", "int32"),
    "Scaling per output channel": (False, True),
    "Target backend": ("flexml", "generic", "layerwise"),
}
# Public figures of the torchvision models (params, MACs at 224x224, conv/linear count,
# share of depthwise convolutions): the model descriptors used by transfer.
BREVITAS_DESCRIPTORS = {
    "resnet18": {"params_m": 11.69, "macs_g": 1.82, "layers": 21, "depthwise_share": 0.0},
    "mobilenet_v2": {"params_m": 3.50, "macs_g": 0.30, "layers": 53, "depthwise_share": 0.32},
    "vit_b_32": {"params_m": 88.2, "macs_g": 4.37, "layers": 50, "depthwise_share": 0.0},
}


def shared_data_dir() -> Path:
    """``$QUANTUNE_SHARED_DATA`` or ``../shared/data`` relative to the repo root."""
    env = os.environ.get("QUANTUNE_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def _parse(text: str) -> Any:
    if text in ("True", "False"):
        return text == "True"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def load_brevitas_landscapes(path: Path) -> list[Landscape]:
    """One landscape per model of the Brevitas results table."""
    by_model: dict[str, list[tuple[dict[str, Any], float]]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            config = {c: _parse(row[c]) for c in BREVITAS_CONFIG_COLUMNS}
            by_model.setdefault(row["Model name"], []).append(
                (config, float(row[BREVITAS_METRIC]))
            )
    from quantune.search.space import SearchSpace

    return [
        Landscape.from_results(
            name, rows, BREVITAS_DESCRIPTORS.get(name),
            space=SearchSpace.from_candidates([c for c, _ in rows], priors=BREVITAS_PRIORS),
        )
        for name, rows in sorted(by_model.items())
    ]


def run_landscapes(
    landscapes: Sequence[Landscape],
    strategies: Sequence[str],
    seeds: int,
    max_drop: float = 0.1,
    log: bool = True,
) -> tuple[list[dict[str, Any]], dict[tuple[str, str], list[ReplayRun]]]:
    """Replay every strategy on every landscape with seeds ``0..seeds-1``.

    ``xgboost-t`` transfers from the other landscapes of the list.

    Returns:
        JSON rows (one per landscape x strategy) and the raw runs.
    """
    rows, runs = [], {}
    for land in landscapes:
        others = [o for o in landscapes if o.name != land.name]
        for strategy in strategies:
            name, transfer = (
                ("xgboost", others) if strategy == "xgboost-t" else (strategy, [])
            )
            done = [
                replay(land, name, seed, max_drop=max_drop, transfer_from=transfer)
                for seed in range(seeds)
            ]
            runs[(land.name, strategy)] = done
            stats = summarize(done, land.space.size)
            row = {"landscape": land.name, "strategy": strategy, "seeds": seeds,
                   "space_size": land.space.size, "n_targets": land.n_within(max_drop), **stats}
            rows.append(row)
            if log:
                print(f"  {land.name:14s} {strategy:10s} median {stats['evals_to_target_median']:6.1f}"
                      f"  p90 {stats['evals_to_target_p90']:6.1f}"
                      f"  wall {stats['wall_s_median']:.2f}s", file=sys.stderr, flush=True)
    return rows, runs


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    """Evaluations to target, median (p90), one line per landscape."""
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    width = max([14, *(len(r["landscape"]) for r in rows)])

    def table(cell: Any, live_only: bool) -> None:
        print(f"{'landscape':{width}s} " + " ".join(f"{s:>14s}" for s in strategies))
        for land in dict.fromkeys(r["landscape"] for r in rows):
            cells = {r["strategy"]: r for r in rows if r["landscape"] == land}
            if live_only and "eval_s_median" not in next(iter(cells.values())):
                continue
            print(f"{land:{width}s} " + " ".join(
                f"{cell(cells[s]) if s in cells else '-':>14s}" for s in strategies))

    table(lambda r: f"{r['evals_to_target_median']:6.1f} ({r['evals_to_target_p90']:5.1f})", False)
    print("cells: evaluations to reach the target (within 0.1 pt of the best; @resolution: "
          "within one evaluation sample), median (p90) over seeds")
    if any("eval_s_median" in r for r in rows):
        print()
        table(lambda r: f"{r['wall_s_median']:8.1f}", True)
        print("cells: live wall time to the target, seconds, median over seeds "
              "(cached evaluation times of the visited points + sampler time)")


def plot(runs: dict[tuple[str, str], list[ReplayRun]], path: Path, horizon: int = 120) -> bool:
    """Median best-so-far vs evaluations, one panel per landscape; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return False
    lands = list(dict.fromkeys(k[0] for k in runs))
    fig, axes = plt.subplots(1, len(lands), figsize=(5 * len(lands), 4), squeeze=False)
    for ax, land in zip(axes[0], lands, strict=True):
        for (name, strategy), done in runs.items():
            if name != land:
                continue
            curves = np.array([(r.best_so_far + [r.best_so_far[-1]] * horizon)[:horizon]
                               for r in done])
            ax.plot(np.arange(1, horizon + 1), np.median(curves, axis=0), label=strategy)
        ax.set_title(land)
        ax.set_xlabel("evaluations")
        ax.set_ylabel("best top-1 so far (median over seeds)")
        ax.set_xscale("log")
        top = max(max(r.best_so_far) for (n, _), d in runs.items() if n == land for r in d)
        ax.set_ylim(top - 5, top + 0.5)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return True


def _live_rows(seeds: int) -> list[dict[str, Any]]:
    """Rows of the cached live landscapes (none cached: a message, no rows)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from search_live import LANDSCAPES_DIR, cached_landscapes, resolution, run_live

    lands = cached_landscapes()
    if not lands:
        print(f"no live landscape cached in {LANDSCAPES_DIR}: run search_live.py --measure",
              file=sys.stderr)
        return []
    rows = run_live(lands, seeds=seeds)
    for land in lands:
        rows += run_live([land], seeds=seeds, max_drop=resolution(land), tag="@resolution")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, required=True, help="write the JSON rows here")
    parser.add_argument("--quick", action="store_true", help="5 seeds instead of 20")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per strategy")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default beside --json)")
    parser.add_argument("--live-seeds", type=int, default=None,
                        help="seeds per strategy on the live landscapes (default 5, --quick 3)")
    parser.add_argument("--no-live", action="store_true", help="skip the live landscapes")
    args = parser.parse_args(argv)
    seeds = args.seeds or (5 if args.quick else 20)
    live_seeds = args.live_seeds or (3 if args.quick else 5)
    csv_path = shared_data_dir() / "brevitas_ptq" / "RESULTS_TORCHVISION.csv"
    if not csv_path.is_file():
        print(f"skipping the Brevitas replay landscapes: {csv_path} not found "
              f"(set QUANTUNE_SHARED_DATA)", file=sys.stderr)
        landscapes: list[Landscape] = []
    else:
        landscapes = load_brevitas_landscapes(csv_path)
    started = time.perf_counter()
    rows, runs = run_landscapes(landscapes, args.strategies.split(","), seeds)
    if not args.no_live:
        rows += _live_rows(live_seeds)
    print_table(rows)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))
    png = args.plot or args.json.with_suffix(".png")
    if runs and plot(runs, png):
        print(f"plot: {png}")
    print(f"{len(rows)} rows -> {args.json} ({time.perf_counter() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
