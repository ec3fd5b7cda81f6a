"""PostgreSQL fixtures: a real throwaway server for the whole session.

- ``postgres_server``: the :class:`~tests.helpers.postgres.PostgresServer` (``restart()``,
  ``stop()``, ``start()``, ``terminate_connections()``, ``create_database()``, ...).
- ``postgres_url``: SQLAlchemy URL (``postgresql+psycopg://``) of the session's app database.
- ``fresh_postgres_url``: a new, empty database for one test, dropped after it.

The tests are skipped only where PostgreSQL is not installed at all, and never under CI
(``CI`` set), where a missing server is an error. psycopg is imported only when a test asks for
PostgreSQL, so the rest run where it is not installed (a GPU machine's bare image).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # imported where a test asks for PostgreSQL: psycopg is not needed otherwise
    from tests.helpers.postgres import PostgresServer

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; install them "
    "(Debian: apt-get install postgresql) or set PG_BINDIR"
)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    from tests.helpers.postgres import PostgresServer, find_bindir

    bindir = find_bindir()
    if bindir is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{INSTALL_HINT} (required under CI)")
        pytest.skip(INSTALL_HINT)
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    return postgres_server.url()


@pytest.fixture
def fresh_postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """An empty database of its own for one test (the server is started again first if an
    earlier test left it stopped)."""
    postgres_server.ensure_running()
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = postgres_server.create_database(name)
    yield url
    if postgres_server.running:
        postgres_server.drop_database(name)
