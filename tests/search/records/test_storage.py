"""Workers started together on an empty database: every one opens the storage, none dies on the race
to create Optuna's tables (real SQLite, PostgreSQL and MariaDB)."""
from __future__ import annotations

import multiprocessing
import uuid
from pathlib import Path

import pytest
import sqlalchemy

from search.records.storage import make_storage

SERVERS = {"postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432",
           "mariadb": "mysql+pymysql://root@127.0.0.1:3306"}
WORKERS = 6


def _open(url: str, barrier) -> str:
    barrier.wait()  # all at once, as a launcher starting workers does
    try:
        storage = make_storage(url)
        storage.get_all_studies()
        return "ok"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def _open_together(url: str) -> list[str]:
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(WORKERS)
        with context.Pool(WORKERS) as pool:
            return pool.starmap(_open, [(url, barrier)] * WORKERS)


@pytest.fixture
def empty_database(request, tmp_path: Path):
    """A URL to a database that holds no tables yet; dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'study.db'}"
        return
    server, name = SERVERS[request.param], f"race_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(f"{server}/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    try:
        yield f"{server}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f"DROP DATABASE {name}"))
        admin.dispose()


@pytest.mark.parametrize("empty_database", ["sqlite", "postgresql", "mariadb"], indirect=True)
def test_workers_opening_an_empty_database_at_once_all_get_the_storage(empty_database):
    assert _open_together(empty_database) == ["ok"] * WORKERS
