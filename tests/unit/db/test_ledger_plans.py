"""The ledger's lookups by content hash find their rows by the hash, however many rows share a
status: SQLite, with no statistics, would otherwise walk every queued (or done) row through the
status index for each batch (db.driver_sql.NotByIndex)."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from contract.records import SeenFile
from db.engine import transaction
from db.ledger import mark_enqueued, queued_items, record_files, requeue_done

BY_HASH = "sqlite_autoindex_images_1 (sha256=?)"


@contextmanager
def plans_of_images_statements(sessions: sessionmaker[Session]) -> Iterator[list[str]]:
    """The query plan of each statement on ``images`` run meanwhile, as SQLite reports it."""
    plans: list[str] = []
    engine = sessions.kw["bind"]

    def explain(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "images" in statement and not statement.lstrip().upper().startswith("EXPLAIN"):
            rows = cursor.connection.execute("EXPLAIN QUERY PLAN " + statement, params)
            plans.append(" / ".join(row[3] for row in rows))

    event.listen(engine, "before_cursor_execute", explain)
    try:
        yield plans
    finally:
        event.remove(engine, "before_cursor_execute", explain)


def _seen(count: int, tag: str) -> list[SeenFile]:
    return [
        SeenFile(path=f"/in/{tag}{i}.jpg", sha256=f"{tag}{i:063d}"[:64], size=1, mtime_ns=1)
        for i in range(count)
    ]


def test_marking_resending_and_requeueing_find_rows_by_their_hash(session_factory) -> None:
    with transaction(session_factory) as session:
        record_files(session, _seen(300, "a"))  # queued rows the lookups must not walk
    some = [seen.sha256 for seen in _seen(40, "a")]
    calls: list[Callable[[Session], object]] = [
        lambda s: mark_enqueued(s, some),
        lambda s: queued_items(s, some),
        lambda s: requeue_done(s, some),
    ]
    for call in calls:
        with plans_of_images_statements(session_factory) as plans, transaction(
            session_factory
        ) as session:
            call(session)
        assert plans, "no statement on images was run"
        for plan in plans:
            assert BY_HASH in plan, plan
