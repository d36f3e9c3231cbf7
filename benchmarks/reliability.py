"""Reliability benchmark: shared-study workers with a SIGKILL, hostile inputs, bounded memory.

    python benchmarks/reliability.py --json out/reliability.json [--quick] [--storage URL]

* **workers**: ``--workers`` ``quantune tune --example`` processes share one study over a
  2x2x2 space (8 trials) on ``--storage`` (default ``$QUANTUNE_TEST_POSTGRES_URL``, else
  an SQLite file with heartbeats); worker 0 is SIGKILLed once the search runs and is
  restarted. Reported: trials completed, duplicates (configurations evaluated twice),
  lost trials (configurations never completed), kills survived, stale trials.
* **hostile**: broken and malicious inputs through the CLI; refused = exit code 2 and no
  output folder left.
* **memory**: peak RSS of a fresh process that prepares EfficientNet-Lite0 (statistics
  collection) and calibrates it layer-wise (AdaQuant) on N and 4N streamed samples
  (needs ``quantune[models]``; skipped without).

Prints a table and writes JSON; asserts nothing (the tests in tests/reliability do).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import redirect_stderr
from io import StringIO
from pathlib import Path
from typing import Any

import torch

SPACE = {"w_bits": [8, 4], "w_granularity": ["per_channel", "per_tensor"], "a_symmetric": [False, True]}
SPACE_SIZE = 8


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "QUANTUNE_QUIET": "1", "MPLBACKEND": "Agg"}


# ----------------------------------------------------------------------------- workers
def run_workers(storage: str, n_workers: int, work: Path) -> dict[str, Any]:
    """``n_workers`` on one study, worker 0 SIGKILLed mid-search and restarted."""
    from quantune.workers import audit_study

    study = f"bench-{uuid.uuid4().hex[:8]}"
    space = work / "space.json"
    space.write_text(json.dumps(SPACE))

    def start(name: str, seed: int) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "quantune.cli", "tune", "--example", "--storage", storage,
               "--study", study, "--space", str(space), "--trials", str(SPACE_SIZE), "--quiet",
               "--no-latency", "--heartbeat", "2", "--seed", str(seed), "--out", str(work / name)]
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=(work / f"{name}.log").open("w"), env=_env())

    started = time.perf_counter()
    procs = {f"w{i}": start(f"w{i}", i) for i in range(n_workers)}
    kills = 0
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and procs["w0"].poll() is None:
        try:
            audit = audit_study(storage, study)
        except Exception:  # noqa: BLE001 - the study does not exist yet
            audit = None
        if audit is not None and audit.running >= 1 and audit.completed >= 1:
            procs["w0"].send_signal(signal.SIGKILL)
            procs["w0"].wait()
            kills = 1
            procs["w0-restarted"] = start("w0-restarted", 0)
            break
        time.sleep(0.2)
    codes = {name: p.wait(timeout=900) for name, p in procs.items()}
    audit = audit_study(storage, study)
    return {
        "storage": storage.split("://")[0], "workers": n_workers, "trials_completed": audit.completed,
        "duplicates": audit.duplicates, "lost_trials": SPACE_SIZE - len(audit.keys), "kills_survived": kills,
        "stale_trials": audit.stale, "exit_codes": codes, "wall_s": round(time.perf_counter() - started, 1),
    }


# ----------------------------------------------------------------------------- hostile inputs
class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def _hostile_cases(work: Path) -> dict[str, list[str]]:
    """name -> CLI arguments of a hostile input (files written under ``work``)."""
    import numpy as np

    from quantune.config import CONFIG_VERSION, QuantConfig
    from quantune.example import build_model, load_example

    x, y = load_example()[1][0]
    torch.save((x, y), work / "calib.pt")
    good = build_model().state_dict()
    raw_path = work / "good.pt"
    torch.save(good, raw_path)
    files: dict[str, Path] = {}
    for name, value in (("nan-weights", float("nan")), ("inf-weights", float("inf"))):
        state = {k: v.clone() for k, v in good.items()}
        next(v for v in state.values() if v.dim() > 1).view(-1)[0] = value
        torch.save(state, work / f"{name}.pt")
        files[name] = work / f"{name}.pt"
    (work / "truncated.pt").write_bytes(raw_path.read_bytes()[:400])
    (work / "garbage.pt").write_bytes(os.urandom(5000))
    with (work / "payload.pt").open("wb") as fh:
        pickle.dump(_Payload(work / "PAYLOAD-RAN"), fh)
    (work / "bad.npy").write_bytes(b"\x93NUMPY" + bytes(300))
    torch.save(torch.randn(4, 1, 8, 8), work / "data.pt")
    (work / "trunc-data.pt").write_bytes((work / "data.pt").read_bytes()[:200])
    np.save(work / "nan.npy", np.full((4, 1, 8, 8), np.nan, dtype=np.float32))
    cfg = json.loads(QuantConfig().to_json())
    (work / "newer.json").write_text(json.dumps({**cfg, "version": CONFIG_VERSION + 1}))
    (work / "unknown.json").write_text(json.dumps({**cfg, "rounding": "stochastic"}))
    (work / "report.json").write_text(json.dumps({"metric_name": "top1", "best": {"metric": 90.0}}))

    def tune(model: Path, data: Path, name: str) -> list[str]:
        return ["tune", str(model), "--model-factory", "quantune.example:build_model", "--calib", str(data),
                "--eval", str(data), "--trials", "1", "--quiet", "--no-latency", "--out", str(work / f"out-{name}")]

    calib = work / "calib.pt"
    cases = {name: tune(path, calib, name) for name, path in files.items()}
    cases.update({
        "truncated-model": tune(work / "truncated.pt", calib, "truncated-model"),
        "garbage-model": tune(work / "garbage.pt", calib, "garbage-model"),
        "pickle-payload": ["tune", str(work / "payload.pt"), "--calib", str(calib), "--eval", str(calib),
                           "--quiet", "--out", str(work / "out-pickle-payload")],
        "corrupt-npy": tune(raw_path, work / "bad.npy", "corrupt-npy"),
        "truncated-data": tune(raw_path, work / "trunc-data.pt", "truncated-data"),
        "nan-data": tune(raw_path, work / "nan.npy", "nan-data"),
    })
    for name in ("newer", "unknown"):
        cases[f"config-{name}"] = ["check", "--example", "--config", str(work / f"{name}.json"),
                                   "--baseline", str(work / "report.json"), "--quiet"]
    return cases


def run_hostile(work: Path) -> dict[str, Any]:
    from quantune.cli import main

    rows = {}
    for name, argv in _hostile_cases(work).items():
        err = StringIO()
        with redirect_stderr(err):
            try:
                code = main(argv)
            except Exception as exc:  # noqa: BLE001 - an unhandled error is a finding
                code = f"{type(exc).__name__}"
        out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
        refused = code == 2 and (out is None or not out.exists()) and not (work / "PAYLOAD-RAN").exists()
        rows[name] = {"exit": code, "refused": refused, "message": (err.getvalue().strip().splitlines() or [""])[-1][:160]}
    return {"tried": len(rows), "refused": sum(r["refused"] for r in rows.values()), "cases": rows}


# ----------------------------------------------------------------------------- memory
class Streamed:
    """``n`` random 224x224 images in batches of 8, made on the fly at every pass."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):  # type: ignore[no-untyped-def]
        g = torch.Generator().manual_seed(0)
        for start in range(0, self.n, 8):
            yield torch.randn(min(8, self.n - start), 3, 224, 224, generator=g)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def memory_child(n: int, adaquant_iters: int, cache_mb: int = 64) -> None:
    """(subprocess) statistics + AdaQuant of EfficientNet-Lite0 on ``n`` streamed samples,
    with ``cache_mb`` as both memory budgets: AdaQuant's per-layer cache and the
    calibration data held in memory (a larger source is replayed at every pass)."""
    torch.set_num_threads(1)
    from quantune import zoo
    from quantune.config import CalibrationProcedure, QuantConfig
    from quantune.prepare import PreparedModel

    model = zoo.get("efficientnet-lite0", "quick", n_calib=8).model
    base = peak_rss_mb()
    started = time.perf_counter()
    prepared = PreparedModel(model, Streamed(n), data_cache_mb=cache_mb)
    prepared.input_statistics()  # the one statistics pass every configuration reuses
    stats_mb, stats_s = peak_rss_mb(), time.perf_counter() - started
    proc = CalibrationProcedure(adaquant=True, adaquant_iters=adaquant_iters, adaquant_cache_mb=cache_mb)
    prepared.quantize(QuantConfig(procedure=proc), mode="simulate")
    print(json.dumps({"n": n, "model_mb": round(base, 1), "stats_peak_mb": round(stats_mb, 1),
                      "adaquant_peak_mb": round(peak_rss_mb(), 1), "stats_s": round(stats_s, 1),
                      "total_s": round(time.perf_counter() - started, 1)}))


def run_memory(n: int, adaquant_iters: int) -> list[dict[str, Any]]:
    rows = []
    for size in (n, 4 * n):
        res = subprocess.run([sys.executable, __file__, "--memory-child", str(size), str(adaquant_iters)],
                             capture_output=True, text=True, env=_env(), timeout=1800)
        if res.returncode != 0:
            raise RuntimeError(res.stderr[-2000:])
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return rows


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--quick", action="store_true", help="small calibration sets, few AdaQuant steps")
    ap.add_argument("--storage", default=os.environ.get("QUANTUNE_TEST_POSTGRES_URL"),
                    help="study storage of the workers (default: $QUANTUNE_TEST_POSTGRES_URL, else SQLite)")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: workers,hostile,memory")
    ap.add_argument("--memory-child", nargs="+", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    skip = set(args.skip.split(","))
    out: dict[str, Any] = {"machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}"}
    with tempfile.TemporaryDirectory(prefix="quantune-rel-") as tmp:
        work = Path(tmp)
        if "workers" not in skip:
            storage = args.storage or f"sqlite:///{work / 'workers.db'}"
            out["workers"] = run_workers(storage, args.workers, work)
            w = out["workers"]
            print(f"workers  {w['workers']} on {w['storage']}: completed {w['trials_completed']}/{SPACE_SIZE}, "
                  f"duplicates {w['duplicates']}, lost {w['lost_trials']}, kills survived {w['kills_survived']}, "
                  f"stale {w['stale_trials']}, {w['wall_s']} s")
        if "hostile" not in skip:
            (work / "hostile").mkdir()
            out["hostile"] = run_hostile(work / "hostile")
            h = out["hostile"]
            print(f"hostile  {h['refused']}/{h['tried']} refused (exit 2, no output)")
            for name, row in h["cases"].items():
                print(f"  {name:16s} exit={row['exit']!s:3s} refused={row['refused']!s:5s} {row['message'][:90]}")
    if "memory" not in skip:
        try:
            import efficientnet_lite_pytorch  # noqa: F401
        except ImportError:
            print("memory   skipped: pip install 'quantune[models]'")
        else:
            n = 16 if args.quick else 64
            out["memory"] = run_memory(n, 1 if args.quick else 20)
            print(f"memory   EfficientNet-Lite0 (1 thread): {'samples':>8s} {'model MB':>9s} "
                  f"{'stats MB':>9s} {'AdaQuant MB':>12s} {'time s':>7s}")
            for r in out["memory"]:
                print(f"{'':41s}{r['n']:8d} {r['model_mb']:9.0f} {r['stats_peak_mb']:9.0f} "
                      f"{r['adaquant_peak_mb']:12.0f} {r['total_s']:7.1f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
