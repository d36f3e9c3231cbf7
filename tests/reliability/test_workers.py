"""Several ``quantune tune`` workers on one study, and workers killed with SIGKILL.

Every test runs real CLI processes on the bundled example over a 2x2x2 space with
``--trials 8``: the study is done when all 8 configurations are evaluated, so the checks
are exact: 8 distinct completed configurations (none evaluated twice while untried ones
remained, none lost), no trial left RUNNING.

A killed worker's trial is **failed as stale, not re-queued**: its heartbeat stops, and
after twice the interval the next worker that looks fails it. A stale trial does not
count as an evaluation and its configuration is untried again, so the sampler proposes
it when it ranks it best. Re-queueing would pin it to the next trial whatever the cost
model prefers, and a configuration that kills its worker (out of memory) would then
kill every worker in turn (see :mod:`quantune.workers`).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from quantune.workers import audit_study

SPACE_SIZE = 8
WAIT_S = 600

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")


def _wait_ok(tmp_path: Path, procs: dict[str, subprocess.Popen]) -> None:
    for name, proc in procs.items():
        rc = proc.wait(timeout=WAIT_S)
        assert rc == 0, f"worker {name} exited {rc}:\n{(tmp_path / f'{name}.log').read_text()[-3000:]}"


def _assert_study_done(storage: str, study: str, stale: int) -> None:
    audit = audit_study(storage, study)
    assert audit.completed == SPACE_SIZE, audit  # no completed trial lost
    assert audit.duplicates == 0, audit  # no configuration evaluated twice
    assert len(audit.keys) == SPACE_SIZE, audit
    assert audit.running == 0 and audit.failed == 0, audit
    assert audit.stale == stale, audit


def _wait_for(path: Path, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        assert proc.poll() is None, f"the worker exited before the kill point:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "the worker never reached the kill point"
        time.sleep(0.1)


def test_two_workers_share_an_sqlite_study(tmp_path: Path, start_worker) -> None:
    """Two processes on one SQLite file (heartbeats asked for): 8 distinct evaluations."""
    storage, study = f"sqlite:///{tmp_path / 'shared.db'}", "sqlite-workers"
    procs = {n: start_worker(storage, study, n, "--heartbeat", "5", "--strategy", "random", "--seed", s)
             for n, s in (("w1", "1"), ("w2", "2"))}
    _wait_ok(tmp_path, procs)
    _assert_study_done(storage, study, stale=0)


def test_three_workers_share_a_postgres_study(tmp_path: Path, start_worker, postgres_url: str) -> None:
    """Three workers (cost-model search, default heartbeat) on one PostgreSQL study."""
    study = f"pg-workers-{uuid.uuid4().hex[:8]}"
    procs = {f"w{s}": start_worker(postgres_url, study, f"w{s}", "--seed", str(s)) for s in (1, 2, 3)}
    _wait_ok(tmp_path, procs)
    _assert_study_done(postgres_url, study, stale=0)
    logs = [(tmp_path / f"{n}.log").read_text() for n in procs]
    assert all("best configuration" in log for log in logs)  # every worker wrote a result


def test_sigkilled_worker_is_failed_stale_and_a_restart_resumes(
    tmp_path: Path, start_worker, postgres_url: str
) -> None:
    """SIGKILL one of three PostgreSQL workers inside its first trial.

    Its trial is failed as stale by the survivors' heartbeat check (not re-queued: see the
    module docstring); the survivors go on, a restarted worker joins, and the finished
    study has every configuration exactly once.
    """
    study = f"pg-kill-{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "in_trial"
    common = ("--eval-fn", "reliability_hooks:score", "--heartbeat", "2")
    victim = start_worker(postgres_url, study, "victim", *common, "--seed", "1",
                          env={"HANG_AT": "2", "MARKER": str(marker)})  # call 1 is the float baseline
    # The survivors start once the victim is inside its trial: started together, on a
    # loaded machine they finished the whole study before the victim got there.
    _wait_for(marker, victim, tmp_path / "victim.log")
    assert audit_study(postgres_url, study).running >= 1
    others = {f"w{s}": start_worker(postgres_url, study, f"w{s}", *common, "--seed", str(s)) for s in (2, 3)}
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL
    others["restarted"] = start_worker(postgres_url, study, "restarted", *common, "--seed", "1")
    _wait_ok(tmp_path, others)
    _assert_study_done(postgres_url, study, stale=1)


def test_sqlite_worker_killed_inside_a_commit_resumes(tmp_path: Path, start_worker) -> None:
    """The only worker of an SQLite study SIGKILLed inside a database commit.

    The kill lands mid-search (commit 60 of ~150: the third trial), with the
    transaction's rows written and its commit not. The file passes ``PRAGMA
    integrity_check``, opens again, and the same command resumes; the trial running at
    the kill is failed as stale at restart (one process owns the file: no heartbeat).
    ``KILL_AT_COMMITS`` (comma list) adds kills, e.g. ``60,25`` also kills the resumed
    run while it reads the study back and fails the dead trial.
    """
    db = tmp_path / "study.db"
    storage, study = f"sqlite:///{db}", "killed-in-write"
    for at in (int(a) for a in os.environ.get("KILL_AT_COMMITS", "60").split(",")):
        proc = start_worker(storage, study, f"killed{at}", script="kill_in_commit.py",
                            env={"KILL_AT_COMMIT": str(at)})
        assert proc.wait(timeout=WAIT_S) == -signal.SIGKILL, (tmp_path / f"killed{at}.log").read_text()[-3000:]
        with sqlite3.connect(db) as con:
            assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        audit_study(storage, study)  # opens and reads again
    _wait_ok(tmp_path, {"resumed": start_worker(storage, study, "resumed")})
    audit = audit_study(storage, study)
    assert audit.stale >= 1
    _assert_study_done(storage, study, stale=audit.stale)
