"""Scoreboard: quantune against ONNX Runtime and torchao on real pretrained models.

    python benchmarks/scoreboard.py --json results.json [--quick] [--models a,b] [--methods x,y]

For every registry model (``quantune.zoo``: example, efficientnet-lite0, minilm-l6) and
every method, on the same calibration and evaluation batches: the entry's fidelity or
accuracy metrics, median latency of one call at batch size 1 with 2 threads, stored
size and preparation time. A method that fails becomes a row with its error, never a
crash. Prints a table, writes the JSON rows and ``benchmarks/RESULTS.md`` with one PNG
plot of metric vs latency per model.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import scoreboard_ort as ort_peers
import scoreboard_torchao as ao_peers
from scoreboard_common import (
    Prepared,
    Row,
    latency_batch,
    machine_description,
    median_latency_ms,
    set_threads,
    tensor_bytes,
)
from scoreboard_quantune import QuantuneRunner
from scoreboard_report import print_table, write_results

from quantune import zoo
from quantune.batches import batch_size

HERE = Path(__file__).resolve().parent
Factory = Callable[[], Prepared]


def methods(entry: zoo.ZooEntry, workdir: Path) -> dict[str, Factory]:
    """Method name -> factory, in display order, for one entry."""
    q = QuantuneRunner(entry)
    linear_model = entry.name == "minilm-l6"  # dynamic int8 flows target Linear layers
    table: dict[str, Factory] = {
        "fp32": lambda: Prepared(entry.model, tensor_bytes(entry.model), 0.0, note="PyTorch eager"),
        "ort-fp32": lambda: ort_peers.fp32(entry, workdir),
        "ort-static-minmax": lambda: ort_peers.static(entry, workdir, "MinMax"),
        "ort-static-entropy": lambda: ort_peers.static(entry, workdir, "Entropy"),
        "ort-static-percentile": lambda: ort_peers.static(entry, workdir, "Percentile"),
    }
    if linear_model:
        table["ort-dynamic"] = lambda: ort_peers.dynamic(entry, workdir)
        table["torchao-dynamic-int8"] = lambda: ao_peers.dynamic_int8_linear(entry)
    table["torchao-pt2e"] = lambda: ao_peers.pt2e_static(entry)
    table["quantune-w8a8"] = lambda: q.build("quantune-w8a8", "simulate")
    table["quantune-w8a8-entropy"] = lambda: q.build("quantune-w8a8-entropy", "simulate")
    table["quantune-w8a8-int"] = lambda: q.build("quantune-w8a8", "integer")
    return table


def run_method(entry: zoo.ZooEntry, name: str, factory: Factory, args: argparse.Namespace, machine: str) -> Row:
    n_eval = sum(batch_size(b) for b in entry.eval_batches)
    row = Row(entry.name, name, entry.primary_metric, None, n_eval=n_eval, machine=machine)
    try:
        prepared = factory()
        row.size_bytes, row.prepare_s, row.note = prepared.size_bytes, prepared.prepare_s, prepared.note
        one = latency_batch(entry.eval_batches[0])
        row.latency_ms = median_latency_ms(prepared.predict, one, warmup=2, repeats=args.repeats, budget_s=args.latency_budget)
        projected = row.latency_ms / 1000.0 * n_eval
        if prepared.budgeted and projected > args.eval_budget:
            row.note = (row.note + "; " if row.note else "") + (
                f"not evaluated: {projected:.0f} s projected for {n_eval} inputs > {args.eval_budget:.0f} s budget"
            )
            return row
        t0 = time.perf_counter()
        row.metrics = entry.evaluate(prepared.predict)
        row.eval_s = time.perf_counter() - t0
        row.metric = row.metrics[entry.primary_metric]
    except Exception as exc:  # failures are data: record and go on
        row.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
        if args.verbose:
            traceback.print_exc()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the JSON rows")
    parser.add_argument("--quick", action="store_true", help="small data sizes (< 10 min on 2 cores)")
    parser.add_argument("--models", default=",".join(zoo.names()), help="comma-separated registry names")
    parser.add_argument("--methods", default="", help="comma-separated method names (default: all)")
    parser.add_argument("--results-dir", type=Path, default=HERE, help="where RESULTS.md and PNGs go")
    parser.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failed methods")
    args = parser.parse_args(argv)
    preset = "quick" if args.quick else "full"
    args.repeats = 5 if args.quick else 20
    args.latency_budget = 20.0 if args.quick else 60.0
    args.eval_budget = 45.0 if args.quick else 900.0
    wanted = {m for m in args.methods.split(",") if m}

    set_threads()
    warnings.filterwarnings("ignore")
    machine = machine_description()
    rows: list[Row] = []
    notes: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="quantune-scoreboard-") as tmp:
        for model_name in [m for m in args.models.split(",") if m]:
            try:
                entry = zoo.get(model_name, preset)
            except Exception as exc:
                rows.append(Row(model_name, "fp32", "", None, error=f"{type(exc).__name__}: {exc}", machine=machine))
                continue
            notes.append(
                f"{model_name}: {entry.description}; {entry.size.n_calib} calibration / {entry.size.n_eval} "
                f"evaluation inputs from disjoint sources ({len(entry.calib_sources)} vs {len(entry.eval_sources)})."
            )
            workdir = Path(tmp) / model_name
            workdir.mkdir()
            for name, factory in methods(entry, workdir).items():
                if wanted and name not in wanted:
                    continue
                t0 = time.perf_counter()
                row = run_method(entry, name, factory, args, machine)
                rows.append(row)
                print(f"[{time.perf_counter() - started:6.0f}s] {model_name} {name}: {row.metric_name}={row.metric} "
                      f"lat={row.latency_ms} ({time.perf_counter() - t0:.0f}s) {row.error}", file=sys.stderr, flush=True)
    print_table(rows)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([r.to_dict() for r in rows], indent=2))
    if not args.no_results:
        command = "python benchmarks/scoreboard.py --json PATH" + (" --quick" if args.quick else "")
        when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        notes.append(f"Total wall time {time.perf_counter() - started:.0f} s.")
        path = write_results(rows, args.results_dir, command=command, machine=machine, when=when, notes=notes)
        print(f"wrote {args.json} and {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
