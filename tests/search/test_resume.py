"""Persistence: a search SIGKILLed mid-trial resumes without repeating finished work."""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import optuna
import pytest

from quantune.search.optuna_bridge import KEY_ATTR, STALE_ATTR
from quantune.search.runner import run_search
from quantune.search.space import SearchSpace, ordinal

N_TRIALS = 6

SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from quantune.search.runner import run_search
    from quantune.search.space import SearchSpace, ordinal

    storage, marker = sys.argv[1], Path(sys.argv[2])
    kill_at = int(os.environ.get("KILL_AT", "0"))
    calls = 0

    def objective(config):
        global calls
        calls += 1
        if calls == kill_at:
            marker.write_text("in trial")  # the parent SIGKILLs us now
            time.sleep(120)
        return float((config["a"] * 7) % 11 + config["b"])

    space = SearchSpace([ordinal("a", range(6)), ordinal("b", range(4))])
    # "random" (quantune's, without replacement) keeps the two interpreter starts free of
    # the xgboost import; it reads visited configurations from the storage exactly as
    # the xgboost sampler does (test_rerun_in_process_... covers xgboost).
    run_search(space, objective, strategy="random", n_trials=N_TRIALS, storage=storage,
               study_name="resume", seed=3)
    """
).replace("N_TRIALS", str(N_TRIALS))


def _run(script: Path, storage: str, marker: Path, kill_at: int = 0) -> subprocess.Popen:
    env = {**os.environ, "KILL_AT": str(kill_at)}
    return subprocess.Popen([sys.executable, str(script), storage, str(marker)],
                            cwd=script.parent, env=env)


def _trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="resume", storage=storage).get_trials()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_mid_trial_then_restart_matches_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "search_job.py"
    script.write_text(SCRIPT)
    marker = tmp_path / "in_trial"

    # The uninterrupted reference runs the same script in this process (saves a start).
    clean = f"sqlite:///{tmp_path / 'clean.db'}"
    monkeypatch.setattr(sys, "argv", [str(script), clean, str(marker)])
    monkeypatch.delenv("KILL_AT", raising=False)
    runpy.run_path(str(script), run_name="__main__")

    killed = f"sqlite:///{tmp_path / 'killed.db'}"
    proc = _run(script, killed, marker, kill_at=4)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, "the search exited before reaching the kill point"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    left = _trials(killed)
    assert [t.state.name for t in left].count("RUNNING") == 1
    assert [t.state.name for t in left].count("COMPLETE") == 3

    assert _run(script, killed, marker).wait(timeout=120) == 0  # same command again

    def complete_keys(storage: str) -> list[str]:
        return [t.user_attrs[KEY_ATTR] for t in _trials(storage) if t.state.name == "COMPLETE"]

    resumed = _trials(killed)
    assert len(complete_keys(killed)) == len(complete_keys(clean)) == N_TRIALS
    assert len(set(complete_keys(killed))) == N_TRIALS  # no configuration evaluated twice
    stale = [t for t in resumed if t.user_attrs.get(STALE_ATTR)]
    assert len(stale) == 1 and stale[0].state.name == "FAIL"


def test_rerun_in_process_counts_earlier_evaluations(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    space = SearchSpace([ordinal("a", range(10))])
    calls: list[int] = []

    def objective(config: dict) -> float:
        calls.append(config["a"])
        return float(config["a"])

    options = {"n_startup": 2, "n_rounds": 10}
    first = run_search(space, objective, strategy="xgboost", n_trials=4, storage=storage,
                       study_name="s", seed=0, sampler_options=options)
    second = run_search(space, objective, strategy="xgboost", n_trials=7, storage=storage,
                        study_name="s", seed=0, sampler_options=options)
    assert first.n_evaluations == 4 and second.n_evaluations == 7
    assert len(calls) == 7 == len(set(calls))
    again = run_search(space, objective, strategy="random", n_trials=7, storage=storage,
                       study_name="s", seed=0)
    assert again.stop_reason == "n_trials" and len(calls) == 7  # nothing left to do
    assert again.best_value == max(calls)


@pytest.mark.slow  # ~20 s: two workers, an SQLite file, heartbeats
def test_two_workers_share_a_study_without_duplicates(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'workers.db'}"
    space = SearchSpace([ordinal("a", range(8)), ordinal("b", range(4))])
    calls: list[tuple[int, int]] = []
    lock = threading.Lock()

    def objective(config: dict) -> float:
        with lock:
            calls.append((config["a"], config["b"]))
        time.sleep(0.05)  # long enough for the workers' trials to overlap
        return float(config["a"] + config["b"])

    run_search(space, objective, strategy="random", n_trials=1, storage=storage,
               study_name="mw", seed=0)  # create the study before the workers start
    results = {}

    def worker(seed: int) -> None:
        results[seed] = run_search(
            space, objective, strategy="xgboost", n_trials=10, storage=storage,
            study_name="mw", seed=seed, heartbeat_interval_s=30,
            sampler_options={"n_rounds": 10, "n_startup": 2},
        )

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(calls) == len(set(calls))  # no configuration evaluated twice
    # Both stop on the shared budget; a worker mid-trial when it is reached finishes it.
    assert 10 <= len(calls) <= 11
    assert all(r.stop_reason == "n_trials" for r in results.values())
