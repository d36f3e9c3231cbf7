"""English sentences from the docstrings of Python's standard library.

Every Python installation ships thousands of carefully written English sentences in
its docstrings. They are read with :mod:`ast` (nothing is imported or executed), split
into sentences, filtered to prose and deduplicated. The source *module* decides the
side of the split: calibration sentences come from one set of modules and evaluation
sentences from the others, and after deduplication no sentence text is on both sides.
"""

from __future__ import annotations

import ast
import functools
import re
import sysconfig
import zlib
from pathlib import Path

import numpy as np

from quantune.errors import UserInputError

# One module in CALIB_EVERY goes to calibration (by a stable hash of its name).
CALIB_EVERY = 4
MIN_WORDS, MAX_WORDS = 6, 40
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
# Prose only: letters, digits, spaces and ordinary punctuation; no code or markup.
_PROSE = re.compile(r"[A-Za-z0-9 ,.;:'()\-?!]+")
_SKIP_MODULES = {"antigravity", "this"}


def stdlib_modules() -> list[Path]:
    """Top-level pure-Python standard library modules, sorted by name."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if not p.stem.startswith("_") and p.stem not in _SKIP_MODULES)
    if not files:
        raise UserInputError(f"No standard library sources found under {root}; the text entries need them.")
    return files


def is_calibration_module(name: str) -> bool:
    """Whether sentences of module ``name`` belong to the calibration side."""
    return zlib.crc32(name.encode()) % CALIB_EVERY == 0


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
    return [d for d in (ast.get_docstring(n, clean=True) for n in nodes) if d]


def _sentences(doc: str) -> list[str]:
    # Paragraphs first: a blank line ends a sentence even without a period.
    out = []
    for para in re.split(r"\n\s*\n", doc):
        text = " ".join(para.split())
        for s in _SPLIT.split(text):
            words = s.split()
            if (
                MIN_WORDS <= len(words) <= MAX_WORDS
                and s[0].isupper()
                and s.endswith(".")
                and _PROSE.fullmatch(s)
                and sum(c.isalpha() for c in s) >= 0.75 * len(s.replace(" ", ""))
            ):
                out.append(s)
    return out


@functools.lru_cache(maxsize=1)
def corpus() -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """``(calibration, evaluation)`` pools of ``(module, sentence)`` pairs, deduplicated.

    A sentence that appears in several modules is kept once, under the first module in
    sorted order, so the two pools never share a sentence text.
    """
    seen: set[str] = set()
    calib: list[tuple[str, str]] = []
    evals: list[tuple[str, str]] = []
    for path in stdlib_modules():
        for doc in _docstrings(path):
            for s in _sentences(doc):
                key = s.lower()
                if key in seen:
                    continue
                seen.add(key)
                (calib if is_calibration_module(path.stem) else evals).append((path.stem, s))
    return tuple(calib), tuple(evals)


def sample(pool: tuple[tuple[str, str], ...], n: int, seed: int, side: str) -> list[tuple[str, str]]:
    """``n`` pairs drawn without replacement from ``pool`` (seeded), in pool order."""
    if n > len(pool):
        raise UserInputError(
            f"Asked for {n} {side} sentences but this Python's standard library yields "
            f"{len(pool)}; lower n_{side}."
        )
    idx = np.sort(np.random.default_rng([seed, 0 if side == "calib" else 1]).choice(len(pool), size=n, replace=False))
    return [pool[i] for i in idx]
