"""The ``quantune`` command line.

Each subcommand lives in its own module (``quantune/cli_<name>.py``) exposing
``add_parser(subparsers)`` and ``run(args) -> int``. User errors print one clear line
and exit with code 2 (a traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from quantune import __version__

SUBCOMMANDS = ("tune", "check", "bits")
EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantune",
        description="Post-training quantization auto-tuner for PyTorch models.",
    )
    parser.add_argument("--version", action="version", version=f"quantune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"quantune.cli_{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"quantune.cli_{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def add_common_options(p: argparse.ArgumentParser) -> None:
    """Options every subcommand takes."""
    p.add_argument("--quiet", action="store_true", help="no progress bars (for CI logs)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    from quantune.errors import QuantuneError
    from quantune.progress import set_quiet

    set_quiet(bool(getattr(args, "quiet", False)))
    try:
        return int(args.run(args))
    except QuantuneError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"quantune {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"quantune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
