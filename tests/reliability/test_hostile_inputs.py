"""Hostile and broken inputs through the CLI: each is refused with one clear line (exit 2,
no traceback) and leaves no output folder behind.

The CLI runs in-process (``quantune.cli.main``) to keep the suite fast: ``main`` returns
2 only for the product's own user errors; any other exception propagates and fails the
test (``tests/core/test_cli.py`` checks the same contract in a subprocess).
"""

from __future__ import annotations

import json
import pickle
import weakref
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from quantune.cli import main
from quantune.config import CONFIG_VERSION, QuantConfig
from quantune.data_loading import load_batches
from quantune.example import build_model, load_example
from quantune.prepare import PreparedModel

FACTORY = "quantune.example:build_model"


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x, y = load_example()[1][0]
    path = tmp_path_factory.mktemp("data") / "calib.pt"
    torch.save((x, y), path)
    return path


def _refused(capsys: pytest.CaptureFixture[str], out: Path, *argv: str) -> str:
    """Run ``quantune *argv``; assert exit 2, one error line, no ``out``; return the line."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"quantune {argv[0]}: error:") and "Traceback" not in err
    assert not out.exists(), f"partial output left in {out}"
    return err


def _tune(model: Path | str, data: Path | str, out: Path, *extra: str) -> list[str]:
    return ["tune", str(model), "--model-factory", FACTORY, "--calib", str(data), "--eval", str(data),
            "--out", str(out), "--trials", "1", "--quiet", "--no-latency", *extra]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused(tmp_path, capsys, data_file, value) -> None:
    state = build_model().state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point() and v.dim() > 1)
    state[name].view(-1)[3] = value
    torch.save(state, tmp_path / "model.pt")
    out = tmp_path / "out"
    err = _refused(capsys, out, *_tune(tmp_path / "model.pt", data_file, out))
    assert "NaN or Inf" in err and name in err


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_broken_model_files_are_refused(tmp_path, capsys, data_file, damage) -> None:
    path = tmp_path / "model.pt"
    torch.save(build_model().state_dict(), path)
    raw = path.read_bytes()
    path.write_bytes({"truncated": raw[: len(raw) // 2], "garbage": bytes(range(256)) * 40, "empty": b""}[damage])
    out = tmp_path / "out"
    assert "model.pt" in _refused(capsys, out, *_tune(path, data_file, out))


def _broken_data(tmp_path: Path, kind: str) -> Path:
    x = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    if kind == "pt-truncated":
        path = tmp_path / "d.pt"
        torch.save(torch.from_numpy(x), path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "npy-garbage":
        path = tmp_path / "d.npy"
        path.write_bytes(b"\x93NUMPY" + bytes(500))
    elif kind == "npz-truncated":
        path = tmp_path / "d.npz"
        np.savez(path, inputs=x)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "nan-inputs":
        path = tmp_path / "d.npy"
        x[2, 0, 1, 1] = np.nan
        np.save(path, x)
    else:  # a zip that is not an npz
        path = tmp_path / "d.npz"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("readme.txt", "not arrays")
    return path


@pytest.mark.parametrize("kind", ["pt-truncated", "npy-garbage", "npz-truncated", "nan-inputs",
                                  "zip-not-npz"])
def test_broken_data_files_are_refused(tmp_path, capsys, kind) -> None:
    torch.save(build_model().state_dict(), tmp_path / "model.pt")
    out = tmp_path / "out"
    _refused(capsys, out, *_tune(tmp_path / "model.pt", _broken_data(tmp_path, kind), out))


class _Payload:
    """Unpickling this runs ``Path.touch(marker)``: what a malicious model file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_payload_never_runs_without_opt_in(tmp_path, capsys, data_file) -> None:
    marker = tmp_path / "pwned"
    with (tmp_path / "model.pt").open("wb") as fh:
        pickle.dump({"model": _Payload(marker)}, fh)
    out = tmp_path / "out"
    args = ["tune", str(tmp_path / "model.pt"), "--calib", str(data_file), "--eval", str(data_file),
            "--out", str(out), "--quiet"]
    assert "--trust-remote-code" in _refused(capsys, out, *args)
    assert not marker.exists()  # the payload never ran


@pytest.mark.parametrize("edit", ["newer", "unknown-top", "unknown-layer"])
def test_configs_from_newer_versions_or_with_unknown_fields_are_refused(tmp_path, capsys, edit) -> None:
    data = json.loads(QuantConfig().to_json())
    if edit == "newer":
        data["version"] = CONFIG_VERSION + 1
    elif edit == "unknown-top":
        data["search_hint"] = "fast"
    else:
        data["default"]["weight"]["rounding"] = "stochastic"
    config = tmp_path / "config.json"
    config.write_text(json.dumps(data))
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"metric_name": "top1", "best": {"metric": 90.0}}))
    err = _refused(capsys, tmp_path / "out", "check", "--example", "--config", str(config),
                   "--baseline", str(report), "--quiet")
    assert ("version" in err) if edit == "newer" else ("Unknown field" in err)


# ---------------------------------------------------------------- streamed data
N_BATCHES = 150  # 150 x 64 x 1 x 8 x 8 floats: 2.5 MB streamed, never more than a few alive
LIVE: set[int] = set()
PEAK = [0]


def _tracked(batch: torch.Tensor) -> torch.Tensor:
    LIVE.add(id(batch))
    PEAK[0] = max(PEAK[0], len(LIVE))
    weakref.finalize(batch, LIVE.discard, id(batch))
    return batch


def generator_factory():
    """A data factory returning a one-shot generator (the common way to write one)."""
    rng = torch.Generator().manual_seed(0)
    return (_tracked(torch.randn(64, 1, 8, 8, generator=rng)) for _ in range(N_BATCHES))


class LazyBatches:
    """A re-iterable data set that makes each batch when asked for it."""

    def __iter__(self):
        return generator_factory()


def lazy_factory() -> LazyBatches:
    return LazyBatches()


@pytest.mark.parametrize("factory", ["generator_factory", "lazy_factory"])
def test_factory_data_is_streamed_not_materialized(factory) -> None:
    """Statistics collection reads every batch of a factory while holding only a few.

    A generator is re-created by calling the factory again for each pass (a plain
    generator would have to be kept whole to be read twice).
    """
    LIVE.clear()
    PEAK[0] = 0
    data = load_batches(f"{__name__}:{factory}")
    assert not isinstance(data, list)
    prepared = PreparedModel(build_model(), data)
    assert prepared.n_samples(None) == 64 * N_BATCHES  # every batch was read (again)
    assert PEAK[0] <= 4, f"{PEAK[0]} batches alive at once: the data was materialized"
