"""Statements run with the driver's own ``executemany`` on the hottest paths (a worker's batch,
the watcher's burst): each row's values bound once, in the driver's placeholder style, with
the values SQLAlchemy would have stored, converted once per batch rather than once per row.

PostgreSQL takes the same rows as one statement over ``unnest`` of one array per column, sent
in binary (``%b``): one plan and one execution per batch rather than one per row, and no
quoting of each text value (psycopg escapes text arrays in Python, element by element).
docs/performance.md, "The ledger's writes", has what each costs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from contract.chunks import chunked
from db.models import Image

# SQLite allows 32766 bound parameters per statement; stay well inside it.
CHUNK = 500


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


def images_by_hash(
    session: Session, hashes: Sequence[str], *columns: InstrumentedAttribute[Any]
) -> list[Any]:
    """``columns`` of the images with these content hashes: one array in PostgreSQL (the
    rows found by key), ``IN`` lists of :data:`CHUNK` in SQLite."""
    connection = session.connection()
    if is_postgresql(connection):
        by_key(connection)
        names = ", ".join(column.key for column in columns)
        return list(
            connection.exec_driver_sql(
                f"SELECT {names} FROM images WHERE sha256 = ANY(%b::text[])", (list(hashes),)
            )
        )
    found: list[Any] = []
    for part in chunked(list(hashes), CHUNK):
        found += session.execute(select(*columns).where(Image.sha256.in_(part))).all()
    return found
