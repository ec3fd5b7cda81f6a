"""Engines and transactions. Each process makes its own engine (never shared across fork)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.orm import Session, sessionmaker

from db.errors import is_stale_connection

SQLITE_BUSY_TIMEOUT_MS = 5000


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``. SQLite gets WAL, a busy timeout and foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "handle_error", _replace_stale_connections)
        return engine
    # Every statement planned for its own parameters: psycopg would otherwise prepare a
    # statement on its fifth run, and PostgreSQL may then keep a generic plan made while
    # the table was small (a scan) as it grows: a batch's lookup by 256 hashes took 28 ms at
    # 30,000 rows, and a burst slowed run after run (docs/performance.md). Planning a batch
    # statement costs a fraction of a millisecond; no prepared statements also suits PgBouncer.
    connect_args = {"prepare_threshold": None, **kwargs.pop("connect_args", {})}
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args, **kwargs)


def _replace_stale_connections(context: ExceptionContext) -> None:
    """A connection that saw the file read-only, full or failing is not reused: the pool opens
    a fresh one, so every process recovers on its own once the file is writable again."""
    if context.original_exception is not None and is_stale_connection(
        context.original_exception
    ):
        context.is_disconnect = True


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with factory() as session, session.begin():
        yield session


def has_schema(engine: Engine) -> bool:
    """True once `db upgrade` has created the tables."""
    return inspect(engine).has_table("model_versions")


class LazySessions:
    """The ledger of the process that uses it, connected on first use: a Celery parent that
    forks its pool never holds a connection, and every process makes its own engine."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._factory: sessionmaker[Session] | None = None

    def get(self) -> sessionmaker[Session]:
        with self._lock:
            if self._factory is None:
                self._engine = make_engine(self._url)
                self._factory = make_sessionmaker(self._engine)
            return self._factory

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
            self._engine = None
            self._factory = None


def database_problem(url: str, connect: bool = True) -> str | None:
    """Why the ledger at ``url`` cannot be used, in words a person can act on, or None: not
    a URL, a database other than SQLite or PostgreSQL, its driver not installed, a SQLite file
    whose folder cannot be written, or (``connect``) a server that does not answer. Without
    ``connect`` nothing is created either (a SQLite file's folder included)."""
    try:
        parsed = make_url(url)
    except Exception:  # sqlalchemy.exc.ArgumentError, ValueError
        return (
            "not a database URL; use sqlite:////abs/path/results.db or "
            "postgresql+psycopg://user:password@host/dbname"
        )
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED:
        return f"{backend!r} is not supported; use SQLite or PostgreSQL"
    try:
        parsed.get_dialect().import_dbapi()
    except Exception as exc:  # ImportError, NoSuchModuleError
        hint = " (pip install -e '.[postgres]')" if backend == "postgresql" else ""
        return f"its driver is not installed: {exc}{hint}"
    if backend == "sqlite":
        problem = _sqlite_file_problem(parsed.database, create=connect)
        if problem is not None:
            return problem
    if not connect:
        return None
    engine = make_engine(url, **_quick_connect(backend))
    try:
        with engine.connect():
            pass
    except Exception as exc:
        reason = getattr(exc, "orig", None) or exc
        return f"cannot connect ({type(reason).__name__}: {str(reason).strip().splitlines()[0]})"
    finally:
        engine.dispose()
    return None


SUPPORTED = frozenset({"sqlite", "postgresql"})


def _sqlite_file_problem(database: str | None, create: bool) -> str | None:
    if not database or database == ":memory:":
        return None
    path = Path(database)
    if path.is_dir():
        return f"{path} is a folder, not a database file"
    if not create:
        return None  # the URL alone is judged; whoever creates the file says what fails
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create {folder}: {exc.strerror or exc}"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot write to {folder} (SQLite needs its folder writable for the WAL)"
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return f"cannot read and write {path}"
    return None


def _quick_connect(backend: str) -> dict[str, Any]:
    if backend == "postgresql":
        return {"connect_args": {"connect_timeout": 3}}
    return {}
