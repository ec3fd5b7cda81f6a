"""The ledger and the reconciler under the races that faults cause, on a real SQLite ledger and
a real redis-server (no worker process: each test sets up the exact state a fault leaves)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import select, update

from broker.app import make_celery
from contract import files as contract_files
from contract.clock import utcnow
from contract.failures import FailureKind, Unusable
from contract.messages import WorkItem
from contract.paths import from_ledger
from contract.records import Classified, Failed, SeenFile
from contract.settings import Settings
from db.batch_write import save_results
from db.engine import transaction
from db.ledger import mark_enqueued, record_files
from db.models import Image, ImageStatus
from db.versions import ensure_base_model
from imaging.decode import BadImage, decode
from tests.helpers.faults import _message_items
from worker.classify.reconcile import reconcile

A, B = "a" * 64, "b" * 64


def read_verified(item: WorkItem, max_bytes: int) -> bytes:
    """What a worker's decode thread does with an item's file before decoding it."""
    return contract_files.read_verified(from_ledger(item.path), item.sha256, max_bytes)
TOP = [{"label": "x", "confidence": 0.9}]


def _row(sessions, sha: str) -> Image:  # type: ignore[no-untyped-def]
    with transaction(sessions) as session:
        image = session.scalars(select(Image).where(Image.sha256 == sha)).one()
        session.expunge(image)
        return image


def _age(sessions, seconds: float) -> None:  # type: ignore[no-untyped-def]
    """Pretend every row was created and sent ``seconds`` ago."""
    past = utcnow() - timedelta(seconds=seconds)
    with transaction(sessions) as session:
        session.execute(update(Image).values(created_at=past, enqueued_at=past))


def _sent(redis_url: str) -> list[str]:
    client = redis.Redis.from_url(redis_url)
    try:
        return [sha for raw in client.lrange("classify", 0, -1) for sha in _message_items(raw)]
    finally:
        client.close()


def test_late_duplicate_failing_does_not_undo_a_done_image(session_factory) -> None:
    """A message redelivered after the image was classified (a reconciler resend, or Redis's
    visibility timeout restoring a dead worker's message) finds the file moved away: the image
    keeps its result instead of turning `failed`."""
    with transaction(session_factory) as session:
        record_files(session, [SeenFile("/in/a.jpg", A, 10, 1)])
        base = ensure_base_model(session, "resnet18", "none", ["x"])
        save_results(session, base.id, [Classified(A, "x", 0.9, TOP)])
    with transaction(session_factory) as session:
        vanished = Failed(A, "file vanished before it could be read", FailureKind.VANISHED)
        save_results(session, base.id, [], [vanished])
    row = _row(session_factory, A)
    assert row.status == ImageStatus.DONE and row.label == "x" and row.error is None
    # A rescore (`reclassify` sets the row back to queued) of a file deleted since: the
    # image keeps its result and its `done` status.
    with transaction(session_factory) as session:
        session.execute(update(Image).values(status=ImageStatus.QUEUED.value))
        vanished = Failed(A, "file vanished before it could be read", FailureKind.VANISHED)
        save_results(session, base.id, [], [vanished])
    row = _row(session_factory, A)
    assert row.status == ImageStatus.DONE and row.label == "x" and row.error is None


def test_reconciler_resends_stuck_rows_then_gives_up_after_max_attempts(
    settings: Settings, session_factory
) -> None:
    """An image whose every delivery is lost (a poison file that kills its worker each time):
    re-sent at most max_attempts times, then failed for good with the reason; never forever."""
    s = settings.model_copy(update={"requeue_after_s": 1.0, "max_attempts": 3})
    with transaction(session_factory) as session:
        record_files(session, [SeenFile("/in/a.jpg", A, 10, 1)])
        mark_enqueued(session, [A])
    app = make_celery(s)
    sends = 0
    for _ in range(s.max_attempts + 3):
        _age(session_factory, 5)
        sends += reconcile(app, s, session_factory)
    row = _row(session_factory, A)
    assert sends == s.max_attempts == len(_sent(s.redis_url or ""))
    assert row.status == ImageStatus.FAILED
    assert row.error == f"gave up after {s.max_attempts} deliveries without a result"


def test_reconciler_leaves_recent_rows_alone(settings: Settings, session_factory) -> None:
    s = settings.model_copy(update={"requeue_after_s": 60.0})
    with transaction(session_factory) as session:
        record_files(session, [SeenFile("/in/a.jpg", A, 10, 1)])
        mark_enqueued(session, [A])
    assert reconcile(make_celery(s), s, session_factory) == 0
    assert _row(session_factory, A).attempts == 0


def test_reconciler_leaves_rows_its_worker_holds_alone(settings: Settings, session_factory) -> None:
    """A backlog waiting its turn in a worker is not stuck, however old its messages are: only
    the rows nobody holds are re-sent, and only they spend a delivery attempt."""
    s = settings.model_copy(update={"requeue_after_s": 1.0})
    with transaction(session_factory) as session:
        record_files(session, [SeenFile("/in/a.jpg", A, 10, 1), SeenFile("/in/b.jpg", B, 10, 1)])
        mark_enqueued(session, [A, B])
    _age(session_factory, 5)
    assert reconcile(make_celery(s), s, session_factory, in_flight=lambda: frozenset({A})) == 1
    assert _sent(s.redis_url or "") == [B]
    assert (_row(session_factory, A).attempts, _row(session_factory, B).attempts) == (0, 1)


def test_image_whose_path_now_holds_new_content_is_not_queued_forever(
    settings: Settings, session_factory
) -> None:
    """Content A was queued at /in/p.jpg, its message was lost (worker killed), and the file was
    replaced by content B before anyone read it. The watcher records B at that path; A has no
    path left. A must end `failed` with a reason, not stay `queued` for ever, and B is done
    as its own image."""
    s = settings.model_copy(update={"requeue_after_s": 1.0})
    with transaction(session_factory) as session:
        record_files(session, [SeenFile("/in/p.jpg", A, 10, 1)])
        mark_enqueued(session, [A])
    with transaction(session_factory) as session:
        assert [w.sha256 for w in record_files(session, [SeenFile("/in/p.jpg", B, 12, 2)])] == [B]
        mark_enqueued(session, [B])
    _age(session_factory, 5)
    reconcile(make_celery(s), s, session_factory)
    old = _row(session_factory, A)
    assert old.status == ImageStatus.FAILED, old.status
    assert "replaced" in (old.error or ""), old.error
    assert _sent(s.redis_url or "") == [B]


def test_same_content_seen_again_after_it_vanished_is_classified(
    settings: Settings, session_factory
) -> None:
    """A file moved (or deleted and dropped again) between enqueue and decode fails "vanished".
    When the watcher sees the same bytes again at a path, the image is queued again: a failure
    that belonged to a path must not shadow the content for ever. Content failures (corrupt)
    stay failed."""
    with transaction(session_factory) as session:
        record_files(session, [SeenFile("/in/a.jpg", A, 10, 1), SeenFile("/in/b.jpg", B, 10, 1)])
        mark_enqueued(session, [A, B])
        base = ensure_base_model(session, "resnet18", "none", ["x"])
        save_results(session, base.id, [], [
            Failed(A, "file vanished before it could be read", FailureKind.VANISHED),
            Failed(B, "corrupt or truncated image: broken data stream", FailureKind.CORRUPT),
        ])
    with transaction(session_factory) as session:
        todo = record_files(session, [SeenFile("/in/moved/a.jpg", A, 10, 2),
                                      SeenFile("/in/again/b.jpg", B, 10, 2)])
    assert [w.sha256 for w in todo] == [A]
    assert todo[0].path == "/in/moved/a.jpg"
    row = _row(session_factory, A)
    assert row.status == ImageStatus.QUEUED and row.error is None
    assert _row(session_factory, B).status == ImageStatus.FAILED


def test_a_file_over_max_file_bytes_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """A 2 GiB sparse file: refused from its size alone, in no time and no memory."""
    import resource
    import time

    sparse = tmp_path / "huge.jpg"
    with open(sparse, "wb") as handle:
        handle.truncate(2 << 30)
    limit = Settings(data_dir=tmp_path).file_byte_limit
    assert limit == 4 * 100_000_000 + (1 << 20)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(Unusable) as refused:
        read_verified(WorkItem(str(sparse), A), limit)
    assert time.monotonic() - started < 1.0
    assert refused.value.kind is FailureKind.TOO_LARGE
    assert "over the 382.5 MiB limit (MAX_FILE_BYTES)" in refused.value.reason
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown_kib < 100 * 1024, f"peak RSS grew {grown_kib} KiB"
    small = tmp_path / "small.jpg"
    small.write_bytes(b"x" * 100)
    with pytest.raises(Unusable, match="MAX_FILE_BYTES"):
        read_verified(WorkItem(str(small), A), 99)


def test_path_failure_kinds_are_the_ones_the_ledger_recognises(tmp_path: Path) -> None:
    """The ledger revives path failures by their kind; this pins the worker's kinds (and the
    wording a person reads stays what it was)."""
    from contract.failures import FailureKind, Unusable, is_path_failure
    from contract.messages import WorkItem

    failures = []
    for make in (
        lambda p: None,  # never created: vanished
        lambda p: p.write_bytes(b"other"),  # changed after it was queued
        lambda p: p.mkdir(),  # not a regular file
    ):
        path = tmp_path / f"f{len(failures)}"
        make(path)
        try:
            read_verified(WorkItem(str(path), A), 1 << 20)
        except Unusable as exc:
            failures.append(exc)
    assert len(failures) == 3
    assert all(is_path_failure(f.kind) for f in failures), failures
    assert [str(f) for f in failures] == [
        "file vanished before it could be read",
        "file changed after it was queued (content hash differs)",
        "not a regular file",
    ]
    assert not is_path_failure(FailureKind.CORRUPT)
    assert not is_path_failure(FailureKind.EMPTY)
    with pytest.raises(BadImage) as corrupt:
        decode(b"\xff\xd8\xff\xe0 not really a jpeg", 10**8)
    assert not is_path_failure(corrupt.value.kind)
