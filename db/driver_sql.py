"""Statements run with the driver's own ``executemany`` on the hottest paths (a worker's batch,
the watcher's burst): each row's values bound once, in the driver's placeholder style, with
the values SQLAlchemy would have stored, converted once per batch rather than once per row."""

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
