"""The CLI end to end in subprocesses, as a user (and a CI job) runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from quantune.config import ActQuant, LayerQuantConfig, QuantConfig, WeightQuant


def _quantune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "QUANTUNE_QUIET": "1"}
    return subprocess.run([sys.executable, "-m", "quantune.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "out"
    proc = _quantune("tune", "--example", "--out", str(out), "--trials", "3", "--quiet", cwd=out.parent)
    return out, proc


def test_tune_example_writes_outputs(tuned):
    out, proc = tuned
    assert proc.returncode == 0, proc.stderr
    for name in ("model/quantune.json", "model/state.pt", "config.json", "report.json", "report.md",
                 "convergence.png", "pareto.png", "layer_bits.png", "study.db"):
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    assert report["metric_name"] == "top1"
    assert report["baseline"]["metric"] >= 97.0
    assert report["best"]["metric"] >= report["baseline"]["metric"] - 1.0
    assert QuantConfig.from_dict(report["best"]["config"]) == QuantConfig.load(out / "config.json")
    assert report["size_bytes"]["quantized"] < report["size_bytes"]["float"]
    assert len(report["trials"]) == 3
    assert "quantune check" in proc.stdout


def test_check_passes_then_fails_on_worse_config(tuned, tmp_path):
    out, _ = tuned
    junit = tmp_path / "junit.xml"
    ok = _quantune("check", "--example", "--config", str(out / "config.json"), "--baseline",
                   str(out / "report.json"), "--max-drop", "1.0", "--junit", str(junit), "--quiet", cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("failures") == "0" and suite.get("tests") == "1"

    worse = tmp_path / "worse.json"
    QuantConfig(LayerQuantConfig(WeightQuant(bits=2, granularity="per_tensor"), ActQuant(bits=2))).save(worse)
    bad = _quantune("check", "--example", "--config", str(worse), "--baseline", str(out / "report.json"),
                    "--max-drop", "1.0", "--junit", str(junit), "--quiet", cwd=tmp_path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "REGRESSION" in bad.stdout
    assert ET.parse(junit).getroot().find("testsuite").get("failures") == "1"


def test_user_errors_exit_2_without_traceback(tmp_path):
    proc = _quantune("tune", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "missing.pt" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_tune_with_a_bit_budget_allocates_every_trial(tmp_path):
    out = tmp_path / "out"
    proc = _quantune("tune", "--example", "--bit-budget", "avg-bits=4", "--trials", "2", "--no-latency",
                     "--out", str(out), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["search"]["bit_budget"] == {"avg_bits": 4.0}
    assert all("bit_policy" in t["point"] and "w_bits" not in t["point"] for t in report["trials"])
    layers = report["layers"]
    avg = sum(row["params"] * row["weight_bits"] for row in layers) / sum(row["params"] for row in layers)
    assert avg <= 4.0 + 0.05  # params include the float bias; the allocator's budget counts weights only
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"w_bits": [4, 8]}))
    bad = _quantune("tune", "--example", "--bit-budget", "avg-bits=4", "--space", str(space),
                    "--out", str(tmp_path / "o2"), "--quiet", cwd=tmp_path)
    assert bad.returncode == 2 and "drop the w_bits" in bad.stderr and "Traceback" not in bad.stderr
