"""The ledger on a real PostgreSQL server: the same contract that
tests/unit/db/test_ledger_writes.py checks on SQLite (content dedupe, idempotent results, JSON
round-trip, bound-parameter filters), plus what only a server shows (the schema Alembic makes
matches the models; concurrent writers)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session, sessionmaker

from contract.filters import ResultFilters
from contract.messages import WorkItem
from contract.records import Classified, Failed, SeenFile
from db import migrate
from db.batch_write import save_results
from db.engine import make_engine, make_sessionmaker, transaction
from db.ledger import count_attempt, find_stuck, mark_enqueued, record_files
from db.models import Base, Image, ImagePath, ImageStatus, ModelStatus, ModelVersion, Prediction
from db.queries import glob_to_like, results
from db.versions import activate, active_model, ensure_base_model

pytestmark = pytest.mark.postgres


def sha(ch: str) -> str:
    return ch * 64


def seen(path: str, ch: str, size: int = 10, mtime_ns: int = 1) -> SeenFile:
    return SeenFile(path=path, sha256=sha(ch), size=size, mtime_ns=mtime_ns)


@pytest.fixture
def pg_sessions(fresh_postgres_url: str) -> Iterator[sessionmaker[Session]]:
    migrate.upgrade(fresh_postgres_url)
    engine = make_engine(fresh_postgres_url)
    assert engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
    yield make_sessionmaker(engine)
    engine.dispose()


# --- schema ---------------------------------------------------------------------------------


def test_upgrade_is_idempotent_and_matches_the_models(postgres_url: str) -> None:
    migrate.upgrade(postgres_url)
    migrate.upgrade(postgres_url)  # a second `db upgrade` (every role runs one) is a no-op
    head = ScriptDirectory.from_config(migrate.alembic_config(postgres_url)).get_current_head()
    assert migrate.current(postgres_url) == head

    engine = make_engine(postgres_url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], f"migrations and models disagree on PostgreSQL: {diff}"
    finally:
        engine.dispose()


# --- the smoke test, on PostgreSQL ----------------------------------------------------------


def test_record_dedupes_content_and_save_is_idempotent(pg_sessions: sessionmaker[Session]) -> None:
    a = seen("/in/a.jpg", "a")
    twin = seen("/in/copy-of-a.jpg", "a", mtime_ns=2)
    with transaction(pg_sessions) as s:
        todo = record_files(s, [a, twin])
        base = ensure_base_model(s, "resnet18", "none", ["x", "y"])
    assert todo == [WorkItem(path="/in/a.jpg", sha256=sha("a"))]
    result = Classified(
        sha256=sha("a"), label="x", confidence=0.9, topk=[{"label": "x", "confidence": 0.9}]
    )
    for _ in range(2):  # a redelivered batch adds nothing
        with transaction(pg_sessions) as s:
            assert save_results(s, base.id, [result]) == 1
    with transaction(pg_sessions) as s:
        rows = s.execute(results(ResultFilters(label="x"))).all()
        assert {r.path for r in rows} == {"/in/a.jpg", "/in/copy-of-a.jpg"}
        assert rows[0].status == ImageStatus.DONE and rows[0].version_name == base.name
        assert s.query(Image).count() == 1
        assert s.query(Prediction).count() == 1


def test_record_again_sends_nothing_new_and_moves_paths(pg_sessions: sessionmaker[Session]) -> None:
    with transaction(pg_sessions) as s:
        todo = record_files(s, [seen("/in/a.jpg", "a"), seen("/in/b.jpg", "b")])
        mark_enqueued(s, [item.sha256 for item in todo])
    assert len(todo) == 2
    with transaction(pg_sessions) as s:
        # Rescan: same files (nothing to send), plus a.jpg's bytes now also at c.jpg, and
        # b.jpg overwritten with new content.
        todo = record_files(
            s, [seen("/in/a.jpg", "a"), seen("/in/c.jpg", "a"), seen("/in/b.jpg", "d", 11, 5)]
        )
    assert todo == [WorkItem(path="/in/b.jpg", sha256=sha("d"))]
    with transaction(pg_sessions) as s:
        paths = {p.path: (p.image.sha256, p.size, p.mtime_ns) for p in s.scalars(select(ImagePath))}
        assert paths == {
            "/in/a.jpg": (sha("a"), 10, 1),
            "/in/c.jpg": (sha("a"), 10, 1),
            "/in/b.jpg": (sha("d"), 11, 5),
        }
        assert s.query(Image).count() == 3  # the old content of b.jpg keeps its row


def test_topk_json_round_trips(pg_sessions: sessionmaker[Session]) -> None:
    topk = [
        {"label": "chat tigré", "confidence": 0.875, "index": 281},
        {"label": 'quote"and\\backslash', "confidence": 1e-7, "index": 0},
        {"label": "雪豹", "confidence": 0.0, "extra": {"nested": [1, 2.5, None, True]}},
    ]
    with transaction(pg_sessions) as s:
        record_files(s, [seen("/in/a.jpg", "a")])
        base = ensure_base_model(s, "resnet50", "imagenet", ["chat tigré", "雪豹"])
        save_results(s, base.id, [Classified(sha("a"), "chat tigré", 0.875, topk)])
    with transaction(pg_sessions) as s:
        image = s.scalars(select(Image)).one()
        assert image.topk == topk
        assert image.label == "chat tigré" and image.confidence == pytest.approx(0.875)
        assert s.scalars(select(Prediction)).one().topk == topk
        assert s.get(ModelVersion, base.id).classes == ["chat tigré", "雪豹"]  # type: ignore[union-attr]
        # Stored as real JSON that SQL users can query with PostgreSQL's JSON operators.
        first = s.execute(text("SELECT topk -> 0 ->> 'label' FROM images")).scalar_one()
        assert first == "chat tigré"


def test_a_large_batch_keeps_every_column_of_every_row(pg_sessions: sessionmaker[Session]) -> None:
    """PostgreSQL writes a batch as one statement over arrays (db.batch_write): each row keeps
    its own values, NULLs included, past the chunk size SQLite's path uses, and a phash an
    earlier result stored survives a result that has none."""
    n = 1300
    hashes = [f"{i:064x}" for i in range(n)]
    files = [SeenFile(f"/in/{i}.jpg", h, 100 + i, 10**18 + i) for i, h in enumerate(hashes)]
    with transaction(pg_sessions) as s:
        items = record_files(s, files)
        base = ensure_base_model(s, "resnet18", "none", ["cat", "dog"])
    assert {i.sha256 for i in items} == set(hashes)

    def result(i: int, with_phash: bool) -> Classified:
        label = ("cat", "dog")[i % 2]
        return Classified(
            hashes[i], label, 0.5 + i / (4 * n),
            [{"label": label, "confidence": 0.5 + i / (4 * n)}, {"label": "x", "confidence": 0.1}],
            needs_review=(None, True, False)[i % 3],
            sure=(None, False, True)[(i // 3) % 3],
            phash=bytes([i % 256]) * 32 if with_phash and i % 4 else None,
        )

    with transaction(pg_sessions) as s:
        assert save_results(s, base.id, [result(i, True) for i in range(n)]) == n
    with transaction(pg_sessions) as s:  # a later result without a hash keeps the stored one
        save_results(s, base.id, [result(i, False) for i in range(0, n, 7)])
    with transaction(pg_sessions) as s:
        rows = {image.sha256: image for image in s.scalars(select(Image))}
        assert s.scalar(select(func.count()).select_from(Prediction)) == n
        paths = dict(s.execute(select(ImagePath.path, ImagePath.size)).all())
    for i, h in enumerate(hashes):
        want, image = result(i, True), rows[h]
        assert image.status == ImageStatus.DONE and image.label == want.label
        assert image.confidence == pytest.approx(want.confidence)
        assert image.topk == want.topk
        assert (image.needs_review, image.sure, image.phash) == (
            want.needs_review, want.sure, want.phash
        )
        assert paths[f"/in/{i}.jpg"] == 100 + i


def test_statements_are_planned_for_their_own_parameters(
    pg_sessions: sessionmaker[Session],
) -> None:
    """No server-side prepared statements (db.engine): a generic plan cached while the table
    was small would keep scanning it as it grows."""
    with transaction(pg_sessions) as s:
        base = ensure_base_model(s, "resnet18", "none", ["cat"])
    for i in range(8):  # psycopg would prepare from the fifth run on
        with transaction(pg_sessions) as s:
            record_files(s, [seen(f"/in/{i}.jpg", "0123456789abcdef"[i])])
            mark_enqueued(s, [sha("0123456789abcdef"[i])])
            save_results(s, base.id, [Classified(sha("0123456789abcdef"[i]), "cat", 0.9, [])])
            prepared = s.execute(text("SELECT count(*) FROM pg_prepared_statements")).scalar()
            assert prepared == 0


def test_failed_results_and_attempt_limit(pg_sessions: sessionmaker[Session]) -> None:
    with transaction(pg_sessions) as s:
        record_files(s, [seen("/in/a.jpg", "a"), seen("/in/b.jpg", "b"), seen("/in/c.jpg", "c")])
        base = ensure_base_model(s, "resnet18", "none", ["x"])
        assert save_results(s, base.id, [], [Failed(sha("a"), "cannot identify image file")]) == 1
        # Unknown hashes (a row deleted meanwhile) are ignored, not errors.
        assert save_results(s, base.id, [Classified(sha("z"), "x", 0.5, [])]) == 0
    with transaction(pg_sessions) as s:
        assert sorted(count_attempt(s, [sha("b"), sha("c")], max_attempts=2)) == [
            sha("b"),
            sha("c"),
        ]
    with transaction(pg_sessions) as s:
        assert count_attempt(s, [sha("b")], max_attempts=2) == [sha("b")]
    with transaction(pg_sessions) as s:  # b's third delivery is one too many
        assert count_attempt(s, [sha("b")], max_attempts=2) == []
    with transaction(pg_sessions) as s:
        status = {i.sha256: (i.status, i.error) for i in s.scalars(select(Image))}
    assert status[sha("a")] == (ImageStatus.FAILED, "cannot identify image file")
    assert status[sha("b")][0] == ImageStatus.FAILED and "gave up" in (status[sha("b")][1] or "")
    assert status[sha("c")] == (ImageStatus.QUEUED, None)


# --- model versions -------------------------------------------------------------------------


def test_ensure_base_model_keeps_exactly_one_active(pg_sessions: sessionmaker[Session]) -> None:
    with transaction(pg_sessions) as s:
        first = ensure_base_model(s, "resnet18", "imagenet", ["a", "b"])
    with transaction(pg_sessions) as s:
        again = ensure_base_model(s, "resnet18", "imagenet", ["a", "b"])
    assert again.id == first.id and again.status == ModelStatus.ACTIVE

    with transaction(pg_sessions) as s:  # the configuration changed: the new base takes over
        other = ensure_base_model(s, "resnet50", "imagenet", ["a", "b"])
    assert other.id != first.id

    with transaction(pg_sessions) as s:  # a trained model, once active, stays active
        trained = ModelVersion(
            name="v3", arch="resnet50", weights="/data/models/v3.pt", classes=["a", "b"],
            status=ModelStatus.CANDIDATE.value, trained=True, val_accuracy=0.93,
            report={"confusion": [[5, 0], [1, 4]]},
        )  # fmt: skip
        s.add(trained)
        s.flush()
        activate(s, trained)
    with transaction(pg_sessions) as s:
        kept = ensure_base_model(s, "resnet18", "imagenet", ["a", "b"])
        assert kept.id == trained.id
        assert active_model(s).id == trained.id  # type: ignore[union-attr]
        statuses = dict(s.execute(select(ModelVersion.name, ModelVersion.status)).all())
    assert statuses == {
        "base:resnet18:imagenet": ModelStatus.RETIRED,
        "base:resnet50:imagenet": ModelStatus.RETIRED,
        "v3": ModelStatus.ACTIVE,
    }


# --- the reconciler's query -----------------------------------------------------------------


def test_find_stuck(pg_sessions: sessionmaker[Session]) -> None:
    hour = timedelta(hours=1)
    with transaction(pg_sessions) as s:
        record_files(s, [seen("/in/a.jpg", "a"), seen("/in/b.jpg", "b"), seen("/in/c.jpg", "c")])
        base = ensure_base_model(s, "resnet18", "none", ["x"])
    with transaction(pg_sessions) as s:
        assert find_stuck(s, hour) == []  # all fresh

    def age(column: str, shas: list[str]) -> None:
        with transaction(pg_sessions) as s:
            s.execute(
                text(f"UPDATE images SET {column} = now() - interval '2 hours' "
                     "WHERE sha256 = ANY(:shas)"),
                {"shas": shas},
            )  # fmt: skip

    age("created_at", [sha("a"), sha("b"), sha("c")])  # never sent, long ago: stuck
    with transaction(pg_sessions) as s:
        assert {w.sha256 for w in find_stuck(s, hour)} == {sha("a"), sha("b"), sha("c")}
        mark_enqueued(s, [sha("a"), sha("b")])
    with transaction(pg_sessions) as s:
        assert find_stuck(s, hour) == [WorkItem("/in/c.jpg", sha("c"))]  # a, b: just sent
    age("enqueued_at", [sha("a")])  # sent long ago, no result: stuck again
    with transaction(pg_sessions) as s:
        stuck = find_stuck(s, hour)
        assert stuck == [WorkItem("/in/a.jpg", sha("a")), WorkItem("/in/c.jpg", sha("c"))]
        assert find_stuck(s, hour, limit=1) == [WorkItem("/in/a.jpg", sha("a"))]
        save_results(s, base.id, [Classified(sha("a"), "x", 0.5, [])], [Failed(sha("c"), "bad")])
    with transaction(pg_sessions) as s:
        assert find_stuck(s, hour) == []  # done and failed rows are never stuck
        assert find_stuck(s, timedelta(0)) == [WorkItem("/in/b.jpg", sha("b"))]


# --- filters: globs, LIKE escaping, bound parameters ----------------------------------------


def test_path_glob_filter_uses_bound_parameters(pg_sessions: sessionmaker[Session]) -> None:
    paths = {
        "/in/cats/a_1.jpg": "1",
        "/in/cats/ab1.jpg": "2",
        "/in/cats/100%.png": "3",
        "/in/cats/1000.png": "4",
        "/in/dogs/o'neil.jpg": "5",
        "/in/dogs/back\\slash.jpg": "6",
        "/in/dogs/x.JPG": "7",
    }
    with transaction(pg_sessions) as s:
        record_files(s, [seen(p, ch) for p, ch in paths.items()])
        base = ensure_base_model(s, "resnet18", "none", ["cat", "dog"])
        save_results(
            s,
            base.id,
            [Classified(sha(ch), "cat" if "cats" in p else "dog", 0.1 * int(ch), [])
             for p, ch in paths.items()],
        )  # fmt: skip

    def matching(limit: int | None = None, **kwargs: object) -> list[str]:
        with transaction(pg_sessions) as s:
            rows = s.execute(results(ResultFilters(**kwargs), limit)).all()  # type: ignore[arg-type]
        return sorted(r.path for r in rows)

    assert matching(path_glob="/in/cats/*") == sorted(p for p in paths if "/cats/" in p)
    assert matching(path_glob="/in/cats/a_1.jpg") == ["/in/cats/a_1.jpg"]  # `_` is literal
    assert matching(path_glob="/in/cats/a?1.jpg") == ["/in/cats/a_1.jpg", "/in/cats/ab1.jpg"]
    assert matching(path_glob="*100%*") == ["/in/cats/100%.png"]  # `%` is literal
    assert matching(path_glob="*/o'neil.jpg") == ["/in/dogs/o'neil.jpg"]
    assert matching(path_glob="*back\\slash*") == ["/in/dogs/back\\slash.jpg"]
    assert matching(path_glob="*.jpg") == sorted(p for p in paths if p.endswith(".jpg"))
    assert matching(path_glob="*/dogs/*", label="dog", min_confidence=0.55) == [
        "/in/dogs/back\\slash.jpg",
        "/in/dogs/x.JPG",
    ]
    assert matching(label="cat", max_confidence=0.15, status="done") == ["/in/cats/a_1.jpg"]
    assert matching(path_glob="*", limit=2) == ["/in/cats/a_1.jpg", "/in/cats/ab1.jpg"]

    hostile = "x'; DROP TABLE images; --"
    assert matching(path_glob=hostile) == []
    assert matching(label=hostile) == []
    with transaction(pg_sessions) as s:
        assert s.query(Image).count() == len(paths)  # still there
    compiled = str(
        results(ResultFilters(path_glob=hostile, label=hostile)).compile(
            dialect=postgresql.dialect()
        )
    )
    assert "DROP TABLE" not in compiled and glob_to_like(hostile) not in compiled


# --- what SQLite cannot show: concurrent writers ----------------------------------------------


def test_concurrent_record_files_of_the_same_content(pg_sessions: sessionmaker[Session]) -> None:
    """Several writers recording the same files at once (a watcher and a manual rescan, or two
    watchers by mistake) end with one row per content and per path, and no errors."""
    files = [seen(f"/in/{i:03d}.jpg", "abcdef"[i % 6]) for i in range(30)]
    writers = 6
    barrier = threading.Barrier(writers, timeout=30)
    errors: list[BaseException] = []
    sent: list[list[WorkItem]] = []

    def write() -> None:
        try:
            barrier.wait()
            with transaction(pg_sessions) as s:
                sent.append(record_files(s, files))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "writers deadlocked"
    assert errors == []
    with transaction(pg_sessions) as s:
        assert s.query(Image).count() == 6
        assert s.query(ImagePath).count() == 30
        assert s.scalar(select(Image.status).distinct()) == ImageStatus.QUEUED
        s.execute(update(Image).values(attempts=0))  # rows are writable afterwards
    assert len(sent) == writers
