"""Statements run with the driver's own ``executemany`` on the hottest paths (a worker's batch,
the watcher's burst): each row's values bound once, in the driver's placeholder style, with
the values SQLAlchemy would have stored, converted once per batch rather than once per row.

PostgreSQL takes the same rows as one statement over ``unnest`` of one array per column, sent
in binary (``%b``): one plan and one execution per batch rather than one per row, and no
quoting of each text value (psycopg escapes text arrays in Python, element by element).
docs/performance.md, "The ledger's writes", has what each costs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

from contract.chunks import chunked

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


class NotByIndex(ColumnElement[Any]):
    """A column that SQLite must not choose an index on (``+column``; elsewhere the column).

    Without statistics SQLite guesses that ``status = 'queued'`` matches ten rows, so for
    ``WHERE sha256 IN (...500 hashes...) AND status = 'queued'`` it walked every queued row
    (or every done one) through the status index rather than looking up 500 hashes: 28 µs a
    row at 20,000 queued rows, growing with the queue, against 3 µs by the hashes."""

    inherit_cache = True
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement)]

    def __init__(self, column: ColumnElement[Any] | InstrumentedAttribute[Any]) -> None:
        self.column = column.expression if isinstance(column, InstrumentedAttribute) else column
        self.type = self.column.type


@compiles(NotByIndex)
def _not_by_index(element: NotByIndex, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.column, **kw)


@compiles(NotByIndex, "sqlite")
def _not_by_index_sqlite(element: NotByIndex, compiler: SQLCompiler, **kw: Any) -> str:
    return "+" + compiler.process(element.column, **kw)


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
    # The driver's statement and each column's own result conversion: the ORM's expanding
    # IN list is compiled anew for every call and cost more than SQLite's lookups.
    names = ", ".join(column.key for column in columns)
    convert = [result_converter(connection, column) for column in columns]
    found: list[Any] = []
    for part in chunked(list(hashes), CHUNK):
        rows = connection.exec_driver_sql(
            f"SELECT {names} FROM images WHERE sha256 IN ({', '.join('?' * len(part))})",
            tuple(part),
        )
        found += [
            tuple(value if f is None else f(value) for f, value in zip(convert, row, strict=True))
            for row in rows
        ]
    return found


def result_converter(
    connection: Connection, column: InstrumentedAttribute[Any]
) -> Callable[[Any], Any] | None:
    """How SQLAlchemy turns ``column``'s stored value into Python's (None: as stored)."""
    dialect = connection.dialect
    return column.type.dialect_impl(dialect).result_processor(dialect, None)
