"""``quantune tune``: search the best quantization configuration of a model and write the results."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from quantune.errors import UserInputError

DEFAULT_OUT = "quantune_out"


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Model and data options shared by ``tune`` and ``check``."""
    from quantune.cli import add_common_options

    p.add_argument("model", nargs="?", help="model file (.pt state dict / pickled module, .pt2), "
                   "Hugging Face folder, registry name (example, efficientnet-lite0, minilm-l6) "
                   "or factory pkg.module:function")
    p.add_argument("--example", action="store_true", help="use the bundled example model and data")
    p.add_argument("--model-factory", metavar="PKG.MOD:FN", help="builds the architecture of a state dict")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow unpickling a model file (runs code from the file: only for trusted files)")
    p.add_argument("--calib", metavar="DATA", help="calibration data (.pt, .npy, .npz, image folder, .txt, factory)")
    p.add_argument("--eval", metavar="DATA", help="evaluation data (same formats; labelled for top1/top5)")
    p.add_argument("--eval-fn", metavar="PKG.MOD:FN", help="callable(model) -> float, higher is better")
    p.add_argument("--metric", choices=("top1", "top5", "fidelity", "cosine", "mse"),
                   help="default: top1 with labels, else fidelity (top-1 agreement with float)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224, help="center crop of image folders")
    p.add_argument("--resize", type=int, default=256, help="short side before cropping")
    p.add_argument("--mean", type=float, nargs="+", default=[0.485, 0.456, 0.406])
    p.add_argument("--std", type=float, nargs="+", default=[0.229, 0.224, 0.225])
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder (or minilm-l6) for .txt data; "
                   "default: the model's own folder for Hugging Face models")
    p.add_argument("--max-length", type=int, default=128, help="tokens per sentence for .txt data")
    p.add_argument("--preset", choices=("quick", "full"), default="quick", help="data size of registry models")
    p.add_argument("--device", default="cpu", choices=("cpu",),
                   help="where trials run; this version tunes on the CPU (the CUDA kernels are "
                   "used when a quantized model is moved to a CUDA device afterwards)")
    add_common_options(p)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("tune", help="search the best quantization configuration",
                       description="Search the PTQ configuration space and write the best quantized model.")
    add_model_options(p)
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default ./{DEFAULT_OUT})")
    p.add_argument("--strategy", default="xgboost", choices=("xgboost", "random", "grid", "genetic", "tpe"))
    p.add_argument("--trials", type=int, default=None, help="evaluation budget (default 12 for --example, else 40)")
    p.add_argument("--timeout", type=float, default=None, help="search wall-time budget in seconds")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite in --out)")
    p.add_argument("--study", default="quantune", help="study name (same storage + name resumes)")
    p.add_argument("--heartbeat", type=int, default=None, metavar="SECONDS",
                   help="workers sharing the study send heartbeats; a dead worker's trial is failed "
                   "after 2x this (default: 10 for server databases, off for SQLite; 0: off)")
    p.add_argument("--max-drop", type=float, default=None, help="accepted metric drop (points for percentages)")
    p.add_argument("--relative-drop", action="store_true", help="--max-drop is a fraction of the baseline")
    p.add_argument("--objectives", default="metric", help="metric, metric,size or metric,latency")
    p.add_argument("--space", default=None, help="'quick', 'full', or a JSON file {dimension: [values]}")
    p.add_argument("--bit-budget", metavar="BUDGET", default=None,
                   help="allocate per-layer weight bits under a budget in every trial, e.g. avg-bits=4.5, "
                        "size=2MB, bops=3G (the space searches bit_policy ilp/uniform instead of w_bits)")
    p.add_argument("--no-latency", action="store_true", help="do not time each trial")
    p.set_defaults(run=run)


def resolve_inputs(args: argparse.Namespace) -> tuple[Any, list[Any], list[Any], str | None, str | None]:
    """``(loaded_model, calib_batches, eval_batches, default_metric, factory)`` from CLI args."""
    from quantune.data_loading import ImageOptions, load_batches
    from quantune.model_loading import load_model

    spec = "example" if args.example else args.model
    if spec is None:
        raise UserInputError("Give a MODEL (file, registry name or pkg.module:function) or --example.")
    loaded = load_model(spec, model_factory=args.model_factory,
                        trust_remote_code=args.trust_remote_code, preset=args.preset)
    calib: Any = None
    evals: Any = None
    metric = None
    if spec == "example" and loaded.registry_entry is None:
        from quantune.example import load_example

        _, calib, evals = load_example()
        metric = "top1"
    elif loaded.registry_entry is not None:
        entry = loaded.registry_entry
        calib, evals = entry.calib_batches, entry.eval_batches
        metric = _metric_of_entry(entry)
    opts = ImageOptions(resize=args.resize, crop=args.image_size, mean=tuple(args.mean), std=tuple(args.std))
    tokenizer = None
    tok_spec = args.tokenizer or loaded.extras.get("tokenizer_dir")
    if tok_spec and any(str(d).endswith(".txt") for d in (args.calib, args.eval) if d):
        from quantune.text_data import make_tokenizer

        tokenizer = make_tokenizer(tok_spec, loaded.model, args.max_length)
    if args.calib:
        calib = load_batches(args.calib, args.batch_size, image_options=opts, tokenizer=tokenizer)
    if args.eval:
        evals = list(load_batches(args.eval, args.batch_size, image_options=opts, tokenizer=tokenizer))
    if calib is None:
        raise UserInputError("Give calibration data with --calib DATA.")
    if evals is None and not args.eval_fn:
        raise UserInputError("Give evaluation data with --eval DATA (or a scorer with --eval-fn).")
    return loaded, calib, evals or [], metric, loaded.factory


def _metric_of_entry(entry: Any) -> str:
    name = str(getattr(entry, "primary_metric", "")).lower()
    if "cos" in name:
        return "cosine"
    if "agree" in name or "fidelity" in name:
        return "fidelity"
    return "top1"


def load_space(spec: str | None, example: bool) -> dict[str, list[Any]] | None:
    from quantune.tune_space import QUICK_DIMENSIONS

    if spec is None:
        spec = "quick" if example else "full"
    if spec == "quick":
        return {k: list(v) for k, v in QUICK_DIMENSIONS.items()}
    if spec == "full":
        return None  # tune() adapts the default space to the model (default_dimensions)
    from quantune.jsonio import read_json_file

    path = Path(spec)
    data = read_json_file(path, "--space file", "use 'quick', 'full' or a JSON file")
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise UserInputError(f"{path} must hold an object {{dimension: [values, ...]}}.")
    return data


def run(args: argparse.Namespace) -> int:
    from quantune.artifact import resolve_factory
    from quantune.errors import QuantuneError
    from quantune.report import summary_table, trials_table
    from quantune.tune import tune
    from quantune.workers import heartbeat_for

    loaded, calib, evals, default_metric, factory = resolve_inputs(args)
    eval_fn = resolve_factory(args.eval_fn) if args.eval_fn else None
    objectives = tuple(o.strip() for o in args.objectives.split(",") if o.strip())
    dimensions = load_space(args.space, args.example or args.model == "example")
    if args.bit_budget and dimensions is not None and args.space in (None, "quick", "full"):
        dimensions.pop("w_bits", None)  # a preset's widths give way to the allocator
    trials = args.trials if args.trials is not None else (12 if args.example else 40)
    out = Path(args.out)
    storage = args.storage
    created = not out.exists()
    if storage is None:
        out.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{(out / 'study.db').resolve()}"
    heartbeat = heartbeat_for(storage, args.heartbeat)
    try:
        result = tune(
            loaded.model, calib, evals,
            eval_fn=eval_fn, metric=args.metric or default_metric, dimensions=dimensions,
            strategy=args.strategy, trials=trials, timeout_s=args.timeout, max_drop=args.max_drop,
            relative_drop=args.relative_drop, objectives=objectives, storage=storage,
            study_name=args.study, heartbeat_interval_s=heartbeat, seed=args.seed,
            measure_latency=not args.no_latency, trial_latency=False if args.no_latency else None,
            show_progress=not args.quiet, bit_budget=args.bit_budget,
        )
    except QuantuneError:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # refused before anything was written: leave no empty --out behind
        raise
    exported = args.model if args.model and str(args.model).endswith(".pt2") and Path(args.model).is_file() else None
    written = result.save(str(out), factory=factory, exported_program=exported)
    print(trials_table(result, limit=None if args.debug else 15))
    print()
    print(summary_table(result))
    if result.target_threshold is not None:
        state = "reached" if result.target_reached else "NOT reached (best found returned)"
        print(f"target {result.metric_name} >= {result.target_threshold:.3f}: {state}")
    print()
    print(f"best configuration : {result.label}")
    print(f"quantized model    : {written['model']}   (quantune.load('{written['model']}'))")
    print(f"config             : {written['config.json']}")
    print(f"report             : {written['report.json']}, {written['report.md']}")
    plots = [v for k, v in written.items() if k.endswith('.png')]
    if plots:
        print(f"plots              : {', '.join(plots)}")
    print(f"study              : {result.storage} (study {result.study_name!r}; rerun the same command to resume)")
    model_arg = " ".join(check_arguments(args))
    print(f"check in CI        : quantune check {model_arg} --config {written['config.json']} "
          f"--baseline {written['report.json']} --max-drop 1.0")
    return 0


def check_arguments(args: argparse.Namespace) -> list[str]:
    """The model and data arguments of this run, to repeat in ``quantune check``."""
    import shlex

    out = ["--example"] if args.example else [shlex.quote(args.model)]
    flags = {"--model-factory": args.model_factory, "--calib": args.calib, "--eval": args.eval,
             "--eval-fn": args.eval_fn, "--metric": args.metric, "--tokenizer": args.tokenizer}
    out += [f"{k} {shlex.quote(str(v))}" for k, v in flags.items() if v]
    if args.trust_remote_code:
        out.append("--trust-remote-code")
    if args.batch_size != 32:
        out.append(f"--batch-size {args.batch_size}")
    return out

