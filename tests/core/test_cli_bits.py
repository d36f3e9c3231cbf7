"""``quantune bits`` in process: outputs, cache reuse and exit codes."""

from __future__ import annotations

import json

import pytest

from quantune.cli import main
from quantune.config import QuantConfig

FAST = ["--example", "--quiet", "--max-samples", "32", "--weight-bits", "2,4,8", "--act-bits", "8",
        "--proxy", "output_mse"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_bits_writes_allocation_config_and_cache(tmp_path, capsys) -> None:
    out = tmp_path / "alloc.json"
    cfg = tmp_path / "config.json"
    rc = main(["bits", *FAST, "--budget", "avg-bits=4", "--out", str(out), "--config-out", str(cfg),
               "--pins", '{"features.0": 8}', "--show-sensitivity"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "policy ilp (optimal)" in printed and "W8A8" in printed
    data = json.loads(out.read_text())
    layers = {row["name"]: row["w_bits"] for row in data["layers"]}
    assert layers["features.0"] == 8 and data["summary"]["avg_bits"] <= 4
    assert QuantConfig.load(cfg).for_layer("features.0").weight.bits == 8
    assert (tmp_path / "quantune_sensitivity_cache.json").is_file()
    # Same cache, another budget: nothing new is measured.
    rc = main(["bits", *FAST, "--budget", "avg-bits=6", "--out", str(out)])
    assert rc == 0
    assert json.loads(out.read_text())["measurement"]["measured"] == 0


@pytest.mark.parametrize(("extra", "message"), [
    (["--budget", "avg-bits=1"], "smallest feasible avg_bits"),
    (["--budget", "avg-bits=4", "--pins", "{not json"], "--pins must be"),
    (["--budget", "avg-bits=4", "--pins", '{"nope": 8}'], "matches no layer"),
    (["--budget", "speed=fast"], "cannot parse budget"),
    (["--budget", "avg-bits=4", "--bit-range", "fc"], "LAYER=LO:HI"),
    (["--budget", "avg-bits=4", "--relinearize", "1"], "needs proxy='loss'"),
])
def test_user_errors_exit_2(tmp_path, capsys, extra: list[str], message: str) -> None:
    rc = main(["bits", *FAST, "--no-cache", "--out", str(tmp_path / "a.json"), *extra])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_missing_model_exits_2(capsys) -> None:
    assert main(["bits", "--budget", "avg-bits=4", "--quiet"]) == 2
    assert "--example" in capsys.readouterr().err


def test_relinearize_steps_are_recorded(tmp_path) -> None:
    out = tmp_path / "alloc.json"
    args = ["--example", "--quiet", "--max-samples", "32", "--weight-bits", "2,3,4,6,8", "--act-bits", "8",
            "--proxy", "loss", "--no-cache", "--refine", "1", "--refine-z", "0"]
    rc = main(["bits", *args, "--budget", "avg-bits=2.5", "--relinearize", "2", "--out", str(out)])
    assert rc == 0
    steps = json.loads(out.read_text())["measurement"]["relinearize"]
    # At this budget the ILP's answer has a neighbour predicted better: at least one step.
    assert steps and {"round", "max_changes", "changed_layers", "z_score", "accepted"} <= set(steps[0])
