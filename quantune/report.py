"""Reports of a tuning run: ``report.json``, ``report.md``, plots, and the output folder."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from quantune import __version__
from quantune.tune_result import TuneResult

REPORT_VERSION = 1


def machine_description() -> dict[str, Any]:
    """Where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "quantune": __version__,
    }


def build_report(result: TuneResult) -> dict[str, Any]:
    """The report as plain JSON-able data."""
    qlayers = result.model.quantized_layers()
    alphas = getattr(result.model, "smoothing_alphas", {})  # absent on models saved before it existed
    per_layer = []
    for info in result.layers:
        m = qlayers.get(info["name"])
        per_layer.append(
            {
                "name": info["name"],
                "kind": info["kind"],
                "depthwise": info["depthwise"],
                "params": info["params"],
                "macs": info["macs"],
                "weight_bits": m.config.weight.bits if m is not None else None,
                "act_bits": (m.config.activation.bits if m is not None and m.config.activation else None),
                "config": m.config.short_name if m is not None else "float",
                # SmoothQuant's alpha this layer runs with ("none": chosen off by "auto").
                **({"smoothing": "none" if alphas[info["name"]] is None else alphas[info["name"]]}
                   if info["name"] in alphas else {}),
            }
        )
    states: dict[str, int] = {}
    for t in result.trials:
        states[t.state] = states.get(t.state, 0) + 1
    return {
        "report_version": REPORT_VERSION,
        "metric_name": result.metric_name,
        "higher_is_better": result.higher_is_better,
        "baseline": {"metric": result.baseline_metric, "latency_ms": result.float_latency_ms},
        "best": {
            "metric": result.best_metric,
            "label": result.label,
            "point": result.point,
            "config": result.config.to_dict(),
            "latency_ms": result.latency_ms,
            "metric_drop": result.metric_drop,
        },
        "size_bytes": {"float": result.float_size_bytes, "quantized": result.size_bytes},
        "compression": result.float_size_bytes / max(result.size_bytes, 1),
        "target": {"threshold": result.target_threshold, "reached": result.target_reached},
        "search": {
            "strategy": result.strategy,
            "objectives": list(result.objectives),
            "n_evaluations": result.n_evaluations,
            "stop_reason": result.stop_reason,
            "study_name": result.study_name,
            "storage": result.storage,
            "trial_states": states,
            "bit_budget": result.bit_budget,
        },
        "trials": [t.to_dict() for t in result.trials],
        "pareto_front": [t.to_dict() for t in result.pareto],
        "layers": per_layer,
        "bn_folded": [list(p) for p in result.bn_pairs],
        "kept_float_unsupported": [list(u) for u in result.unsupported],
        "calibration_samples": result.n_calib_samples,
        "timings": {"total_s": result.wall_s},
        "machine": machine_description(),
    }


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def trials_table(result: TuneResult, limit: int | None = None) -> str:
    """Plain-text table of the trials (best metric first)."""
    rows = sorted(
        (t for t in result.trials if t.metric is not None),
        key=lambda t: -t.metric if result.higher_is_better else t.metric,  # type: ignore[operator]
    )
    if limit:
        rows = rows[:limit]
    header = f"{'#':>4}  {'configuration':<44} {result.metric_name:>9} {'size KB':>9} {'lat ms':>8}"
    lines = [header, "-" * len(header)]
    for t in rows:
        size = f"{t.size_bytes / 1024:.1f}" if t.size_bytes else "-"
        lines.append(f"{t.number:>4}  {t.label[:44]:<44} {_fmt(t.metric, 3):>9} {size:>9} {_fmt(t.latency_ms):>8}")
    failed = [t for t in result.trials if t.state == "FAIL"]
    pruned = sum(t.state == "PRUNED" for t in result.trials)
    if failed or pruned:
        lines.append(f"({len(failed)} failed, {pruned} pruned trial(s) not shown)")
    return "\n".join(lines)


def summary_table(result: TuneResult) -> str:
    """Baseline vs best, as a small text table."""
    lines = [
        f"{'':<12} {result.metric_name:>10} {'size KB':>10} {'latency ms':>11}",
        f"{'float':<12} {_fmt(result.baseline_metric, 3):>10} {result.float_size_bytes / 1024:>10.1f} {_fmt(result.float_latency_ms):>11}",
        f"{'quantized':<12} {_fmt(result.best_metric, 3):>10} {result.size_bytes / 1024:>10.1f} {_fmt(result.latency_ms):>11}",
    ]
    return "\n".join(lines)


def markdown_report(result: TuneResult, report: dict[str, Any]) -> str:
    lines = [
        "# quantune report",
        "",
        f"Best configuration: **{result.label}** ({result.strategy} search, "
        f"{result.n_evaluations} evaluations, stopped: {result.stop_reason}).",
        "",
        "| | " + result.metric_name + " | size (KB) | latency (ms) |",
        "|---|---:|---:|---:|",
        f"| float | {_fmt(result.baseline_metric, 3)} | {result.float_size_bytes / 1024:.1f} | {_fmt(result.float_latency_ms)} |",
        f"| quantized | {_fmt(result.best_metric, 3)} | {result.size_bytes / 1024:.1f} | {_fmt(result.latency_ms)} |",
        "",
    ]
    if result.target_threshold is not None:
        lines += [f"Target: {result.metric_name} >= {result.target_threshold:.3f}: "
                  f"{'reached' if result.target_reached else 'NOT reached'}.", ""]
    lines += ["## Layers", "", "| layer | kind | params | MACs | config |", "|---|---|---:|---:|---|"]
    for row in report["layers"]:
        kind = row["kind"] + (" (dw)" if row["depthwise"] else "")
        lines.append(f"| {row['name']} | {kind} | {row['params']} | {row['macs']} | {row['config']} |")
    if report["kept_float_unsupported"]:
        lines += ["", "Kept float (not quantizable): " + ", ".join(f"{n} ({t})" for n, t in report["kept_float_unsupported"])]
    lines += ["", "## Trials", "", "```", trials_table(result), "```", ""]
    if result.pareto and len(result.objectives) > 1:
        lines += ["## Pareto front", "", "| trial | configuration | " + " | ".join(result.objectives) + " |",
                  "|---|---|" + "---:|" * len(result.objectives)]
        for t in result.pareto:
            vals = [_fmt(t.metric, 3), str(t.size_bytes), _fmt(t.latency_ms)]
            lines.append(f"| {t.number} | {t.label} | " + " | ".join(vals[: len(result.objectives)]) + " |")
        lines.append("")
    m = report["machine"]
    lines += ["## Machine", "", f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads).", ""]
    return "\n".join(lines)


def write_outputs(result: TuneResult, out_dir: str | Path, *, factory: str | None = None,
                  exported_program: str | Path | None = None) -> dict[str, str]:
    """Write the output folder atomically: files appear only once all are complete.

    Contents: ``model/`` (artifact for :func:`quantune.load`), ``config.json``,
    ``report.json``, ``report.md`` and PNG plots. Other files already in ``out_dir``
    (such as the study database) are kept.
    """
    from quantune.artifact import save
    from quantune.plots import write_plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".quantune-out-", dir=out))
    written: dict[str, str] = {}
    try:
        report = build_report(result)
        save(result.model, tmp / "model", factory=factory, exported_program=exported_program)
        result.config.save(tmp / "config.json")
        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        (tmp / "report.md").write_text(markdown_report(result, report))
        plots = write_plots(result, report, tmp)
        names = ["model", "config.json", "report.json", "report.md", *plots]
        for name in names:
            dest = out / name
            if dest.is_dir():
                shutil.rmtree(dest)
            elif dest.exists():
                dest.unlink()
            (tmp / name).rename(dest)
            written[name] = str(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written
