"""Packaging guards of DESIGN.md: explicit package list, cheap import, no bare top-level names."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
MAPPED = {"search": "quantune.search", "calibration": "quantune.calibration"}


def _package_folders() -> set[str]:
    found = set()
    for top in ("quantune", "search", "calibration"):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT).parts
            name = ".".join(rel)
            for folder, pkg in MAPPED.items():
                if rel[0] == folder:
                    name = ".".join((pkg, *rel[1:]))
            found.add(name)
    return found


def test_every_package_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    assert listed == _package_folders()
    assert config["tool"]["setuptools"]["package-dir"] == {v: k for k, v in MAPPED.items()}


def test_import_quantune_is_cheap():
    code = (
        "import sys, quantune, quantune.config, quantune.prepare, quantune.kernels\n"
        "heavy = [m for m in ('xgboost', 'optuna', 'pulp', 'onnxruntime', 'triton') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_no_bare_or_relative_imports_of_mapped_packages():
    banned = re.compile(r"^(from|import) (search|calibration)(\.|\s|$)|^from \.")
    bad = []
    for top in ("quantune", "search", "calibration", "tests", "benchmarks"):
        for path in (ROOT / top).rglob("*.py"):
            for line in path.read_text().splitlines():
                if banned.match(line.strip()):
                    bad.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert bad == []
