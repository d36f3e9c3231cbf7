"""Live search landscapes: exhaustive PTQ sweeps of real models, cached, then replayed.

    python benchmarks/search_live.py --measure example          # evaluate every point once
    python benchmarks/search_live.py --measure efficientnet-lite0
    python benchmarks/search_live.py --json out/live.json [--seeds 5]   # replay the caches

A *live* landscape is a small PTQ space of :mod:`quantune.tune_space` over a real
model. Every point is built once with ``quantune.prepare_model(...)`` +
``PreparedModel.quantize(point_to_config(...), mode="simulate")`` and scored with the
model's metric; the metric and the evaluation's wall time of each point are cached as
JSON in ``benchmarks/landscapes/`` (the ground truth, committed). Replaying a strategy
on the cache runs the real search loop with a table lookup as the objective, so it takes
seconds, and its wall time is what the live search would have cost: the summed
evaluation times of the points it visited plus its own sampler overhead.

The measurement appends one JSON line per point to a ``.partial`` file first, so an
interrupted sweep resumes where it stopped; the finished cache is one JSON document.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quantune.search.replay import Landscape, replay, summarize
from quantune.search.space import config_key

REPO = Path(__file__).resolve().parents[1]
LANDSCAPES_DIR = REPO / "benchmarks" / "landscapes"
LIVE_STRATEGIES = ("xgboost", "random", "grid", "genetic", "tpe")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LiveSpec:
    """How to build one live landscape.

    Attributes:
        dimensions: The PTQ space (name -> values, see :func:`quantune.tune_space.ptq_space`).
        metric: Metric name of :class:`quantune.evaluation.Evaluator`.
        data: ``() -> (model, calib_batches, eval_batches)``.
        note: What the data is, for the cache's header.
    """

    dimensions: Mapping[str, tuple[Any, ...]]
    metric: str
    data: Callable[[], tuple[Any, list[Any], list[Any]]]
    note: str


def _example_data() -> tuple[Any, list[Any], list[Any]]:
    from quantune.example import load_example

    return load_example()


def _efficientnet_data() -> tuple[Any, list[Any], list[Any]]:
    from quantune.zoo import registry

    entry = registry.get("efficientnet-lite0", "quick")
    return entry.model, entry.calib_batches, entry.eval_batches


# The spaces are chosen to be exhaustively measurable on a small shared CPU machine:
# AdaQuant (tens of seconds a point on the example, minutes on EfficientNet) is left
# out, and so are bias correction and entropy calibration on EfficientNet (3 min and
# 45 s a point there against ~15 s for the others). Low weight and activation bit
# widths keep the example's landscape from being flat: at W8A8 nearly every
# configuration ties with the float model.
LIVE_SPECS: dict[str, LiveSpec] = {
    "example": LiveSpec(
        dimensions={
            "w_bits": (8, 4, 3, 2),
            "a_bits": (8, 4),
            "w_granularity": ("per_channel", "per_tensor"),
            "a_method": ("minmax", "percentile:99.99", "percentile:99.999", "entropy", "mse", "aciq"),
            "bias_correction": (False, True),
        },
        metric="top1",
        data=_example_data,
        note="bundled digits CNN, 256 calibration / 500 labelled evaluation images",
    ),
    "efficientnet-lite0": LiveSpec(
        dimensions={
            "w_bits": (8, 6, 4),
            "w_granularity": ("per_channel", "per_tensor"),
            "w_method": ("minmax", "mse"),
            "a_method": ("minmax", "percentile:99.99", "percentile:99.999", "mse"),
        },
        metric="fidelity",
        data=_efficientnet_data,
        note="zoo preset 'quick': 16 calibration / 48 evaluation photograph crops, "
        "metric = top-1 agreement with FP32 (%)",
    ),
}


def machine() -> str:
    """CPU model and core count of this machine, for the cache's header."""
    from quantune.report import machine_description

    desc = machine_description()
    return f"{desc['cpu']}, {desc['cores']} logical cores, {platform.system()}"


# ----------------------------------------------------------------------- measurement
def measure(name: str, out_dir: Path = LANDSCAPES_DIR, threads: int = 1, log: bool = True) -> Path:
    """Evaluate every point of live landscape ``name`` once and cache the results.

    Args:
        name: A key of :data:`LIVE_SPECS`.
        out_dir: Folder of the caches.
        threads: torch intra-op threads (1: the machine is shared, and the per-point
            times then measure one core, comparably across points).
        log: One line per point on stderr.

    Returns:
        Path of the finished cache ``<out_dir>/<name>.json``.
    """
    import torch

    from quantune.evaluation import Evaluator
    from quantune.prepare import prepare
    from quantune.progress import suppressed
    from quantune.tune import model_descriptor
    from quantune.tune_space import describe_point, point_to_config, ptq_space

    spec = LIVE_SPECS[name]
    torch.set_num_threads(threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    final, partial = out_dir / f"{name}.json", out_dir / f"{name}.partial.jsonl"
    done = _read_partial(partial)
    started = time.perf_counter()
    model, calib, val = spec.data()
    prepared = prepare(model, calib)
    prepared.stats()  # statistics are collected once per search, not per point
    evaluator = Evaluator(val, spec.metric, reference=prepared.float_model)
    baseline = evaluator(prepared.float_model)
    prepare_s = time.perf_counter() - started
    space = ptq_space(spec.dimensions)
    points = list(space.enumerate())
    with partial.open("a") as sink:
        for i, point in enumerate(points):
            key = config_key(point)
            if key in done:
                continue
            t0 = time.perf_counter()
            with suppressed():
                qmodel = prepared.quantize(point_to_config(point, prepared.layer_names), mode="simulate")
            value = float(evaluator(qmodel))
            row = {"config": point, "metric": value, "eval_s": time.perf_counter() - t0,
                   "label": describe_point(point)}
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            done[key] = row
            if log:
                print(f"  [{i + 1}/{len(points)}] {row['label']:40s} {value:7.2f}  "
                      f"{row['eval_s']:.1f}s", file=sys.stderr, flush=True)
    doc = {
        "version": FORMAT_VERSION,
        "name": name,
        "metric": spec.metric,
        "note": spec.note,
        "baseline": baseline,
        "dimensions": {k: list(v) for k, v in spec.dimensions.items()},
        "descriptor": model_descriptor(prepared),
        "machine": machine(),
        "torch": torch.__version__,
        "threads": threads,
        "prepare_s": prepare_s,
        "points": [done[config_key(p)] for p in points],
    }
    final.write_text(json.dumps(doc, indent=1) + "\n")
    partial.unlink()
    return final


def _read_partial(path: Path) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[config_key(row["config"])] = row
    return rows


# ----------------------------------------------------------------------- replay
@dataclass(frozen=True)
class TimedLandscape(Landscape):
    """A landscape whose lookups also charge each point's measured evaluation time.

    Attributes:
        eval_s: config_key -> seconds the live evaluation of that point took.
        spent: Seconds charged since the last :meth:`reset` (a one-item list, so the
            frozen landscape can still count).
    """

    eval_s: dict[str, float] = field(default_factory=dict)
    spent: list[float] = field(default_factory=lambda: [0.0])

    def evaluate(self, config: Mapping[str, Any]) -> float:
        key = config_key(config)
        self.spent[0] += self.eval_s[key]
        return self.table[key]

    def reset(self) -> None:
        """Start charging a new search."""
        self.spent[0] = 0.0


def load_live(path: Path) -> TimedLandscape:
    """The cached exhaustive results at ``path`` as a replayable, timed landscape."""
    from quantune.tune_space import ptq_space

    doc = json.loads(Path(path).read_text())
    space = ptq_space({k: tuple(v) for k, v in doc["dimensions"].items()})
    pairs = [(p["config"], float(p["metric"])) for p in doc["points"]]
    base = Landscape.from_results(doc["name"], pairs, doc.get("descriptor"), space=space)
    times = {config_key(space.validate(p["config"])): float(p["eval_s"]) for p in doc["points"]}
    if len(times) != space.size:
        raise ValueError(f"{path}: {len(times)} points measured, the space has {space.size}")
    return TimedLandscape(base.name, base.space, base.table, base.descriptor, eval_s=times)


def cached_landscapes(folder: Path = LANDSCAPES_DIR) -> list[TimedLandscape]:
    """Every finished cache in ``folder`` (in :data:`LIVE_SPECS` order)."""
    return [load_live(folder / f"{n}.json") for n in LIVE_SPECS if (folder / f"{n}.json").is_file()]


def resolution(land: Landscape) -> float:
    """The metric's step on ``land``: the smallest gap between two measured values.

    A top-1 or agreement percentage on N samples moves in steps of 100/N points (0.2
    on 500 images); a target finer than one step asks for the single luckiest
    configuration, which is noise as much as quality. Values are rounded to 1e-3 (the
    metrics are float32 means: 99.4 is stored as 99.4000017) and the step is nudged up
    by 1e-3 so values exactly one step below the best count as within it.
    """
    values = np.unique(np.round(np.fromiter(land.table.values(), dtype=np.float64), 3))
    gaps = np.diff(values)
    return float(gaps[gaps > 0].min() + 1e-3) if gaps.size else 0.0


def run_live(
    landscapes: Sequence[TimedLandscape],
    strategies: Sequence[str] = LIVE_STRATEGIES,
    seeds: int = 5,
    max_drop: float = 0.1,
    log: bool = True,
    tag: str = "",
) -> list[dict[str, Any]]:
    """Replay every strategy on every live landscape with seeds ``0..seeds-1``.

    ``tag`` is appended to the rows' landscape names (e.g. ``"@resolution"``).

    Returns:
        JSON rows; ``wall_s_median`` is the median over seeds of (evaluation seconds of
        the visited points + the search's own wall time), ``eval_s_median`` and
        ``sampler_s_median`` its two parts.
    """
    rows = []
    for land in landscapes:
        for strategy in strategies:
            runs, evals_s = [], []
            for seed in range(seeds):
                land.reset()
                runs.append(replay(land, strategy, seed, max_drop=max_drop))
                evals_s.append(land.spent[0])
            stats = summarize(runs, land.space.size)
            sampler = [r.wall_s for r in runs]
            total = [e + s for e, s in zip(evals_s, sampler, strict=True)]
            row = {
                "landscape": f"live:{land.name}{tag}", "strategy": strategy, "seeds": seeds,
                "max_drop": max_drop, "space_size": land.space.size,
                "n_targets": land.n_within(max_drop),
                **stats,
                "wall_s_median": float(np.median(total)),
                "eval_s_median": float(np.median(evals_s)),
                "sampler_s_median": float(np.median(sampler)),
                "exhaustive_s": float(sum(land.eval_s.values())),
            }
            rows.append(row)
            if log:
                print(f"  live:{land.name + tag:30s} {strategy:8s} median {row['evals_to_target_median']:6.1f}"
                      f"  p90 {row['evals_to_target_p90']:6.1f}  wall {row['wall_s_median']:7.1f}s",
                      file=sys.stderr, flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--measure", choices=list(LIVE_SPECS), help="run the exhaustive sweep")
    parser.add_argument("--json", type=Path, help="replay the caches and write JSON rows here")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.measure:
        print(f"wrote {measure(args.measure, threads=args.threads)}")
    if args.json:
        rows = run_live(cached_landscapes(), seeds=args.seeds)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
        print(f"{len(rows)} rows -> {args.json}")
    if not (args.measure or args.json):
        parser.error("give --measure NAME and/or --json PATH")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
