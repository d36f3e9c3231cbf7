"""Several tuning workers on one study: heartbeat choice and a study audit.

Workers are ordinary ``quantune tune`` processes given the same ``--storage`` URL and
``--study`` name; Optuna's RDB storage is the only thing they share. Two rules make that
safe (see :mod:`quantune.search.study` for the mechanism):

* **Heartbeats for shared studies.** A worker that starts on a study without heartbeats
  treats every RUNNING trial as left over from a dead run and fails it, which is right
  for one process owning an SQLite file and wrong when live workers share the study.
  :func:`heartbeat_for` therefore turns heartbeats on for server databases
  (PostgreSQL, MySQL, ...) and leaves them off for SQLite files unless asked (several
  processes on one SQLite file: ``--heartbeat N``).
* **A dead worker's trial is failed, not re-queued.** Its heartbeat stops; after twice
  the interval the next worker to look fails it (no ``quantune.error`` attribute, so it
  is *stale*): it does not count as an evaluation, and its configuration becomes
  untried again, to be proposed when the sampler ranks it best. Re-queueing would pin
  that configuration to the next trial whatever the cost model now prefers, and a
  configuration that kills its worker (out of memory) would kill every worker in turn.

:func:`audit_study` reads a study back and counts what the reliability tests and
``benchmarks/reliability.py`` check: completed evaluations, configurations evaluated
more than once, stale and failed trials, trials still RUNNING.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from quantune.errors import UserInputError

DEFAULT_HEARTBEAT_S = 10
"""Heartbeat interval (s) of workers on a server database; a dead worker's trial is
failed after twice this."""


def is_sqlite(storage: str | None) -> bool:
    """Whether ``storage`` is an SQLite URL (one file, by default one owner process)."""
    return storage is not None and storage.startswith("sqlite")


def heartbeat_for(storage: str | None, requested: int | None = None) -> int | None:
    """The heartbeat interval (seconds) a worker should use on ``storage``; None: off.

    Args:
        storage: Optuna storage URL, or None (in-memory study: no other worker).
        requested: ``--heartbeat``: None chooses automatically (on for server databases,
            off for SQLite and in-memory studies), 0 turns heartbeats off, N > 0 sets N.

    Raises:
        UserInputError: a negative interval, or a heartbeat without an RDB storage URL.
    """
    if requested is not None:
        if requested < 0:
            raise UserInputError(f"--heartbeat must be >= 0 seconds, got {requested}.")
        if requested == 0:
            return None
        if storage is None or "://" not in storage:
            raise UserInputError("--heartbeat needs a database --storage URL (sqlite:///..., postgresql://...).")
        return int(requested)
    if storage is None or "://" not in storage or is_sqlite(storage):
        return None
    return DEFAULT_HEARTBEAT_S


def storage_url(storage: str) -> str:
    """``storage`` with a PostgreSQL driver that is installed.

    SQLAlchemy 2.1 reads a bare ``postgresql://`` URL as psycopg 3, SQLAlchemy 2.0 as
    psycopg2: a bare URL gets whichever of the two is importable (``postgres://``, as
    Heroku-style services print it, too). Explicit ``postgresql+driver://`` URLs and
    other databases are returned unchanged.

    Raises:
        UserInputError: a PostgreSQL URL and neither driver is installed.
    """
    import importlib.util

    scheme, sep, rest = storage.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return storage
    for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{driver}://{rest}"
    raise UserInputError(
        "A PostgreSQL storage needs a driver: pip install 'quantune[postgres]' (psycopg2-binary)."
    )


def display_url(storage: str | None) -> str | None:
    """``storage`` with its password masked, for logs and reports."""
    if storage is None or "://" not in storage:
        return storage
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(storage).render_as_string(hide_password=True)
    except ArgumentError:
        return storage


def ensure_storage(storage: str, attempts: int = 8, pause_s: float = 0.5) -> None:
    """Create the schema of an empty RDB storage, tolerating workers that race to do it.

    Workers started together on a fresh database all find no tables and all create
    them; every loser of that race fails on the schema-version row (an integrity error)
    or on a lock. Retrying finds the tables made by the winner.

    Raises:
        UserInputError: the database still cannot be opened after ``attempts`` tries.
    """
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(attempts):
        try:
            optuna.storages.RDBStorage(storage).remove_session()
            return
        except SQLAlchemyError as exc:
            if attempt == attempts - 1:
                raise UserInputError(f"Cannot open the study storage {storage}: {exc}") from exc
            time.sleep(pause_s * (1 + attempt))


@dataclass(frozen=True)
class StudyAudit:
    """What a (multi-worker) study holds, as the reliability checks count it.

    Attributes:
        completed: COMPLETE trials that evaluated their configuration (cached answers
            of an already evaluated configuration excluded).
        duplicates: Configurations with more than one such evaluation.
        stale: Trials failed because their worker died (never finished).
        failed: Trials whose objective failed (recorded errors).
        running: Trials still RUNNING (zero once every worker has exited and the dead
            workers' trials were failed).
        cached: Trials answered from an earlier evaluation of their configuration.
        keys: Keys of the completed configurations.
    """

    completed: int
    duplicates: int
    stale: int
    failed: int
    running: int
    cached: int
    keys: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "keys"}


def audit_study(storage: str, study_name: str) -> StudyAudit:
    """Count the trials of ``study_name`` in ``storage`` (see :class:`StudyAudit`)."""
    import optuna

    from quantune.search.optuna_bridge import CACHED_ATTR, KEY_ATTR, is_stale

    trials = optuna.load_study(study_name=study_name, storage=storage_url(storage)).get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    evaluated = [t for t in trials if t.state.name == "COMPLETE" and not t.user_attrs.get(CACHED_ATTR)]
    keys = Counter(str(t.user_attrs.get(KEY_ATTR)) for t in evaluated)
    stale = sum(is_stale(t) for t in trials)
    return StudyAudit(
        completed=len(evaluated),
        duplicates=sum(n - 1 for n in keys.values()),
        stale=stale,
        failed=states["FAIL"] - stale,
        running=states["RUNNING"],
        cached=sum(bool(t.user_attrs.get(CACHED_ATTR)) for t in trials),
        keys=tuple(sorted(keys)),
    )
