"""``quantune check``: CI regression gate for a saved quantization configuration."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    from quantune.cli_tune import add_model_options

    p = sub.add_parser("check", help="re-apply a config and fail on regression (CI gate)",
                       description="Re-apply a saved configuration, evaluate it and compare with a "
                       "baseline report. Exit 0 when every gate passes, 1 on regression, 2 on bad input.")
    add_model_options(p)
    p.add_argument("--config", required=True, help="config.json written by quantune tune")
    p.add_argument("--baseline", required=True, help="report.json written by quantune tune")
    p.add_argument("--max-drop", type=float, default=0.0, help="accepted metric drop vs the baseline")
    p.add_argument("--max-size", type=int, default=None, help="largest accepted model size in bytes")
    p.add_argument("--junit", default=None, help="write JUnit XML here")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from quantune.artifact import resolve_factory
    from quantune.check import check
    from quantune.cli_tune import resolve_inputs

    loaded, calib, evals, _, _ = resolve_inputs(args)
    result = check(
        loaded.model, args.config, calib, evals, args.baseline,
        max_drop=args.max_drop, max_size=args.max_size,
        eval_fn=resolve_factory(args.eval_fn) if args.eval_fn else None,
    )
    print(result.table())
    if args.junit:
        result.write_junit(args.junit)
        print(f"JUnit XML: {args.junit}")
    print("PASSED" if result.passed else "REGRESSION")
    return 0 if result.passed else 1
