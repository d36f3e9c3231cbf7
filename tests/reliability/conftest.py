"""Fixtures of the reliability tests: tuning workers as real ``quantune tune`` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

# A 2x2x2 space: every worker test evaluates all of it, so "no configuration twice while
# untried ones remain" means exactly 8 distinct completed configurations.
SPACE = {"w_bits": [8, 4], "w_granularity": ["per_channel", "per_tensor"], "a_symmetric": [False, True]}
SPACE_SIZE = 8

# The test objective for kill tests: the example's top-1, with a hook that hangs the
# worker inside its Nth evaluation (HANG_AT) after writing MARKER, so the test can SIGKILL
# it mid-trial deterministically. Test code only: the product has no such hook.
HOOKS = '''
import os, time
from pathlib import Path

import torch

from quantune.example import load_example

_, _, _VAL = load_example()
_calls = 0


def score(model):
    global _calls
    _calls += 1
    if _calls == int(os.environ.get("HANG_AT", "0")):
        Path(os.environ["MARKER"]).write_text(str(os.getpid()))
        time.sleep(600)
    with torch.no_grad():
        hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in _VAL)
    return 100.0 * hits / sum(len(y) for _, y in _VAL)
'''

# Kills its own process (SIGKILL) inside the Nth database commit: the transaction's rows
# are written, the commit is not, as when a machine dies in the middle of a write.
KILL_IN_COMMIT = '''
import os, signal, sys
from sqlalchemy import event
from sqlalchemy.engine import Engine

_at, _n = int(os.environ["KILL_AT_COMMIT"]), 0


@event.listens_for(Engine, "commit")
def _kill(conn):
    global _n
    _n += 1
    if _n == _at:
        os.kill(os.getpid(), signal.SIGKILL)


from quantune.cli import main

sys.exit(main(sys.argv[1:]))
'''


@pytest.fixture()
def space_file(tmp_path: Path) -> Path:
    path = tmp_path / "space.json"
    path.write_text(json.dumps(SPACE))
    return path


@pytest.fixture()
def hooks_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "hooks"
    folder.mkdir()
    (folder / "reliability_hooks.py").write_text(HOOKS)
    (folder / "kill_in_commit.py").write_text(KILL_IN_COMMIT)
    return folder


def worker_env(**extra: str) -> dict[str, str]:
    """Environment of a worker: one thread each (the workers share few cores), no bars."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "QUANTUNE_QUIET": "1", "MPLBACKEND": "Agg", **extra}


Worker = Callable[..., subprocess.Popen]


@pytest.fixture()
def start_worker(tmp_path: Path, space_file: Path, hooks_dir: Path) -> Worker:
    """``start_worker(storage, study, name, *extra, env=None, script=None)`` -> the process.

    Runs ``quantune tune --example --storage S --study NAME --space space.json
    --trials 8 --quiet --no-latency --out tmp/NAME`` (or ``script`` with those
    arguments), output in ``tmp/NAME.log``.
    """
    started: list[subprocess.Popen] = []

    def start(storage: str, study: str, name: str, *extra: str, env: dict[str, str] | None = None,
              script: str | None = None) -> subprocess.Popen:
        args: Sequence[str] = (
            "tune", "--example", "--storage", storage, "--study", study, "--space", str(space_file),
            "--trials", str(SPACE_SIZE), "--quiet", "--no-latency", "--out", str(tmp_path / name), *extra,
        )
        head = [sys.executable, str(hooks_dir / script)] if script else [sys.executable, "-m", "quantune.cli"]
        env = worker_env(**(env or {}))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(hooks_dir), env.get("PYTHONPATH", "")) if p)
        log = (tmp_path / f"{name}.log").open("w")
        proc = subprocess.Popen([*head, *args], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        started.append(proc)
        return proc

    yield start
    for proc in started:  # a failed test leaves no worker behind
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture()
def postgres_url() -> str:
    """The test PostgreSQL (``.ci/postgres.sh``); skips when QUANTUNE_TEST_POSTGRES_URL is unset."""
    url = os.environ.get("QUANTUNE_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("QUANTUNE_TEST_POSTGRES_URL is not set (.ci/postgres.sh start prints one)")
    pytest.importorskip("psycopg2", reason="pip install 'quantune[postgres]'")
    return url

