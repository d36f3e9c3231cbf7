"""``quantune bits``: per-layer bit allocation of a model under a budget.

    quantune bits --example --budget avg-bits=4.5
    quantune bits efficientnet-lite0 --budget size=2.5MB --act-bits 8 --pins '{"_fc": 8}'
    quantune bits pkg.models:build --calib calib.pt --budget bops=3G,latency-ms=4 --out bits.json

Prints the allocation table (per-layer widths, sensitivities, totals against the
budget) and writes it as JSON, plus the :class:`~quantune.config.QuantConfig` that
applies it (``--config-out``), ready for ``quantune check --config``. Sensitivities are
cached in a JSON file beside the output, so a second run at another budget measures
nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from quantune.errors import UserInputError
from quantune.search.sensitivity_losses import LOSSES

DEFAULT_OUT = "allocation.json"
CACHE_NAME = "quantune_sensitivity_cache.json"


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def add_parser(sub: Any) -> None:
    from quantune.cli import add_common_options

    p = sub.add_parser("bits", help="allocate per-layer bit widths under a budget",
                       description="Measure per-layer sensitivity and solve the bit-allocation "
                                   "integer program under a size / average-bits / BOPs / latency budget.")
    p.add_argument("model", nargs="?", help="registry name (example, efficientnet-lite0, minilm-l6), "
                   "model file, Hugging Face folder or factory pkg.module:function")
    p.add_argument("--example", action="store_true", help="the bundled example model and its labelled data")
    p.add_argument("--budget", required=True, help="e.g. avg-bits=4.5, size=2MB, bops=3G, latency-ms=4 "
                   "(comma-separated to combine)")
    p.add_argument("--calib", metavar="DATA", help="calibration data (.pt, .npy, .npz, image folder, .txt, factory)")
    p.add_argument("--pins", metavar="JSON", help='pinned layers, JSON text or file: {"features.0": 8, '
                   '"fc": [8, 8], "head": "float"}')
    p.add_argument("--out", default=DEFAULT_OUT, help=f"allocation JSON (default {DEFAULT_OUT})")
    p.add_argument("--config-out", metavar="FILE", help="also write the QuantConfig that applies the allocation")
    p.add_argument("--config", metavar="FILE", help="base QuantConfig JSON (schemes, range methods); "
                   "the allocation only changes bit widths")
    p.add_argument("--policy", default="ilp", choices=("ilp", "greedy", "uniform"))
    p.add_argument("--proxy", default="loss", choices=("loss", "output_mse", "hessian"))
    p.add_argument("--refine", type=int, default=4, metavar="K",
                   help="ilp: measure the K allocations of least predicted loss; an alternative replaces "
                        "the optimum only when it measures significantly better (1 trusts the prediction; "
                        "default 4)")
    p.add_argument("--refine-z", type=float, default=2.0, metavar="Z",
                   help="paired z-score an alternative must beat the optimum by (default 2; 0: least "
                        "measured loss wins)")
    p.add_argument("--relinearize", type=int, default=0, metavar="ROUNDS",
                   help="ilp, loss proxy: measure the sensitivities again around the allocation and "
                        "solve again, up to ROUNDS times; a new allocation is kept only when it measures "
                        "significantly better (--refine-z; default 0: off)")
    p.add_argument("--loss", default="auto", choices=LOSSES)
    p.add_argument("--weight-bits", type=_int_list, default=(2, 3, 4, 6, 8), help="candidates, e.g. 2,3,4,6,8")
    p.add_argument("--act-bits", type=_int_list, default=(4, 8), help="candidates, e.g. 4,8")
    p.add_argument("--cross", default="additive", choices=("additive", "full"),
                   help="measure every (w, a) pair (full) or the two axes only (additive)")
    p.add_argument("--keep-float", nargs="*", default=[], metavar="LAYER", help="layers kept float (or re:PATTERN)")
    p.add_argument("--bit-range", nargs="*", default=[], metavar="LAYER=LO:HI", help="allowed weight bits per layer")
    p.add_argument("--group", nargs="*", default=[], metavar="A,B,C", help="layers that share widths")
    p.add_argument("--max-samples", type=int, default=256, help="calibration samples for sensitivity")
    p.add_argument("--cache", metavar="FILE", help=f"sensitivity cache (default {CACHE_NAME} beside --out)")
    p.add_argument("--no-cache", action="store_true", help="keep measurements in memory only")
    p.add_argument("--storage", metavar="URL", help="Optuna storage URL that also caches sensitivities")
    p.add_argument("--latency", action="store_true", help="measure the latency table even without latency-ms=")
    p.add_argument("--show-sensitivity", action="store_true", help="print the sensitivity table too")
    p.add_argument("--model-factory", metavar="PKG.MOD:FN", help="builds the architecture of a state dict")
    p.add_argument("--trust-remote-code", action="store_true", help="allow unpickling a model file")
    p.add_argument("--preset", choices=("quick", "full"), default="quick", help="data size of registry models")
    p.add_argument("--batch-size", type=int, default=32)
    add_common_options(p)
    p.set_defaults(run=run)


def parse_pins(text: str | None) -> dict[str, Any]:
    """Pins from JSON text or a JSON file; ``[w, a]`` lists become tuples."""
    if not text:
        return {}
    path = Path(text)
    source = path.read_text(encoding="utf-8") if path.is_file() else text
    try:
        data = json.loads(source)
    except json.JSONDecodeError as exc:
        raise UserInputError(f"--pins must be a JSON object or a file holding one: {exc}") from exc
    if not isinstance(data, dict):
        raise UserInputError('--pins must be a JSON object such as {"features.0": 8}')
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}


def parse_bit_ranges(items: list[str]) -> dict[str, tuple[int | None, int | None]]:
    """``["fc=4:8", "re:conv.*=:6"]`` -> ``{"fc": (4, 8), "re:conv.*": (None, 6)}``."""
    ranges: dict[str, tuple[int | None, int | None]] = {}
    for item in items:
        name, sep, span = item.rpartition("=")
        lo, colon, hi = span.partition(":")
        try:
            if not sep or not colon:
                raise ValueError
            ranges[name] = (int(lo) if lo else None, int(hi) if hi else None)
        except ValueError as exc:
            raise UserInputError(f"--bit-range wants LAYER=LO:HI (either end may be empty), got {item!r}") from exc
    return ranges


def _inputs(args: argparse.Namespace) -> tuple[Any, Any]:
    """``(model, calibration batches)`` from the model and data arguments."""
    from quantune.data_loading import load_batches
    from quantune.model_loading import load_model

    if args.example or (args.model == "example" and not args.calib):
        from quantune.example import load_example

        model, calib, _ = load_example()
        return model, calib
    if args.model is None:
        raise UserInputError("Give a MODEL (registry name, file or pkg.module:function) or --example.")
    loaded = load_model(args.model, model_factory=args.model_factory,
                        trust_remote_code=args.trust_remote_code, preset=args.preset)
    calib = loaded.registry_entry.calib_batches if loaded.registry_entry is not None else None
    if args.calib:
        calib = load_batches(args.calib, args.batch_size, tokenizer=loaded.extras.get("tokenizer"))
    if calib is None:
        raise UserInputError("Give calibration data with --calib DATA.")
    return loaded.model, calib


def run(args: argparse.Namespace) -> int:
    from quantune.config import QuantConfig
    from quantune.search.allocation import apply_allocation
    from quantune.search.bits_api import AllocationOptions, allocate_bits

    base = QuantConfig.load(args.config) if args.config else None
    out = Path(args.out)
    cache = None if args.no_cache else (args.cache or str(out.parent / CACHE_NAME))
    options = AllocationOptions(
        weight_bits=args.weight_bits, act_bits=args.act_bits, cross=args.cross, proxy=args.proxy,
        loss=args.loss, policy=args.policy, bit_ranges=parse_bit_ranges(args.bit_range),
        groups=tuple(tuple(n for n in g.split(",") if n) for g in args.group),
        keep_float=tuple(args.keep_float), base_config=base, max_samples=args.max_samples,
        seed=args.seed, cache_path=cache, storage=args.storage, latency=True if args.latency else None,
        refine=args.refine, refine_z=args.refine_z, relinearize=args.relinearize,
        show_progress=not args.quiet)
    model, calib = _inputs(args)
    allocation = allocate_bits(model, calib, args.budget, pins=parse_pins(args.pins), options=options)
    if args.show_sensitivity and allocation.sensitivity is not None:
        print(allocation.sensitivity.to_table())
        print()
    print(allocation.to_table())
    out.parent.mkdir(parents=True, exist_ok=True)
    allocation.save(out)
    print(f"\nallocation : {out}")
    if args.config_out:
        apply_allocation(allocation, base).save(args.config_out)
        print(f"config     : {args.config_out}   (quantune check ... --config {args.config_out})")
    if cache:
        print(f"cache      : {cache}   (a run at another budget measures nothing new)")
    return 0
