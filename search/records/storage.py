"""Optuna storage from a URL: SQLite, PostgreSQL, MySQL/MariaDB, or a journal file.

RDB storages get a heartbeat, so a worker that dies mid-trial has that trial failed
by whichever worker notices first, and retried.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna
from optuna.storages import RDBStorage, RetryFailedTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial

from search.records.secrets import redact

log = logging.getLogger(__name__)
JOURNAL_PREFIX = "journal:"
SCHEMA_ATTEMPTS = 8  # workers started together on an empty database: the one that creates the tables wins


class StorageError(ValueError):
    """The storage URL is malformed, its driver is missing, or its database does not answer."""


@dataclass(frozen=True)
class HeartbeatSettings:
    interval: int = 10       # seconds between a running trial's heartbeats
    grace_period: int = 30   # a trial silent this long is taken as dead
    max_retry: int = 2       # how often a dead worker's trial is re-run


def storage_url(storage: str | None, run_dir: Path) -> str:
    """The configured URL, or the study file inside the run's output folder."""
    return storage or f"sqlite:///{(Path(run_dir) / 'study.db').resolve()}"


def make_storage(url: str, heartbeat: HeartbeatSettings = HeartbeatSettings(),
                 on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> optuna.storages.BaseStorage:
    """Open ``url`` and check that it answers; one clear error if it does not."""
    if url.startswith(JOURNAL_PREFIX):
        path = Path(url[len(JOURNAL_PREFIX):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    retry = RetryFailedTrialCallback(max_retry=heartbeat.max_retry)

    def stale(study: optuna.Study, trial: FrozenTrial) -> None:
        retry(study, trial)
        if on_stale is not None:
            on_stale(study, trial)

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        for attempt in range(1, SCHEMA_ATTEMPTS + 1):
            try:
                return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat.interval,
                                  grace_period=heartbeat.grace_period, heartbeat_stale_trial_callback=stale)
            except Exception as exc:
                if attempt == SCHEMA_ATTEMPTS or not _schema_race(exc):
                    raise
                # Another process is creating Optuna's tables in this empty database right now; once it is
                # done, opening finds them and creates nothing. The jitter spreads the next tries apart.
                log.debug("storage %s: tables being created by another process (%s); retrying", redact(url), exc)
                time.sleep(random.uniform(0.2, 1.0) * attempt)
    except ImportError as exc:
        raise StorageError(f"storage={redact(url)!r}: the database driver is missing; "
                           "install 'psycopg[binary]' for postgresql:// or pymysql for mysql+pymysql://") from exc
    except Exception as exc:  # sqlalchemy raises ArgumentError, OperationalError, NoSuchModuleError, ...
        reason = redact(str(exc).strip().splitlines()[0]) if str(exc).strip() else type(exc).__name__
        raise StorageError(f"storage={redact(url)!r} cannot be opened: {reason}. Allowed: sqlite:///FILE, "
                           f"postgresql://USER@HOST/DB, mysql+pymysql://USER@HOST/DB or journal:FILE") from exc


def _schema_race(exc: Exception) -> bool:
    """Whether opening failed because another process created the same tables (or version row) first."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    if isinstance(exc, IntegrityError):  # the alembic version row, or PostgreSQL's enum types (pg_type)
        return True
    return isinstance(exc, (OperationalError, ProgrammingError)) and "already exists" in str(exc)


def existing_storage(url: str, study_name: str) -> optuna.storages.BaseStorage:
    """Open a storage that must already hold ``study_name`` (export, report, sync)."""
    path = Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None
    if path is not None and not path.is_file():
        raise StorageError(f"search.study_name={study_name!r}: no such study ({path} does not exist); "
                           f"run `autosqueeze search search.study_name={study_name}` first, or set storage=")
    return make_storage(url)
