"""Statements run with the driver's own ``executemany`` on the hottest paths (a worker's batch,
the watcher's burst): each row's values bound once, in the driver's placeholder style, with
the values SQLAlchemy would have stored, converted once per batch rather than once per row.

PostgreSQL takes the same rows as one statement over ``unnest`` of one array per column, sent
in binary (``%b``): one plan and one execution per batch rather than one per row, and no
quoting of each text value (psycopg escapes text arrays in Python, element by element).
docs/performance.md, "The ledger's writes", has what each costs."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Connection


def placeholder(connection: Connection) -> str:
    """``?`` for SQLite, ``%s`` for psycopg."""
    return "?" if connection.dialect.paramstyle == "qmark" else "%s"


def bound(connection: Connection, column: ColumnElement[Any], value: Any) -> Any:
    """``value`` as the dialect stores it in ``column`` (e.g. SQLite's datetime text)."""
    dialect = connection.dialect
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    return process(value) if process is not None else value


def is_postgresql(connection: Connection) -> bool:
    return connection.dialect.name == "postgresql"


def by_key(connection: Connection) -> None:
    """For the rest of this PostgreSQL transaction, find rows through an index wherever one
    applies. The hot paths touch a few hundred rows by key; the default cost of a random page
    (4, from spinning disks) makes PostgreSQL scan a table of up to tens of thousands of rows
    instead, which took 4.4 ms for a batch's 256 hashes at 27,000 rows where the index takes a
    fraction of one. A scan is still used where no index applies."""
    connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
