"""The classify worker on real parts: a Celery worker (threads pool) consuming from a real
redis-server, a real SQLite ledger, real image files and a real torchvision resnet18."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import torch
from celery import Celery
from celery.contrib.testing.worker import start_worker
from PIL import Image as PILImage
from sqlalchemy import func, select

from broker.send import send_classify
from contract import stamps
from contract.messages import WorkItem
from contract.records import SeenFile
from contract.settings import Settings
from db.engine import transaction
from db.ledger import record_files
from db.models import Image, ImageStatus, ModelStatus, ModelVersion, Prediction
from db.versions import activate
from tests.helpers.images import write_image, write_images
from tests.helpers.pipeline import count, record, wait_until
from watcher.hashing import hash_file
from worker.model import model_store, modelzoo
from worker.model.layout import worker_concurrency
from worker.tasks import create_worker_app


@pytest.fixture
def worker_app(settings: Settings) -> Iterator[Celery]:
    fast = settings.model_copy(update={"model_check_interval_s": 0.2})
    app = create_worker_app(fast)
    with start_worker(
        app,
        pool="threads",
        concurrency=worker_concurrency(fast),
        perform_ping_check=False,
        queues=["classify"],
        shutdown_timeout=30,
    ):
        yield app


def bad_inputs(folder: Path) -> dict[str, str]:
    """name -> expected error fragment."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("definitely not a JPEG")
    (folder / "page.png").write_text("<html><body>hi</body></html>")
    noisy = io.BytesIO()
    PILImage.effect_noise((300, 200), 50).convert("RGB").save(noisy, "JPEG")
    (folder / "truncated.jpg").write_bytes(noisy.getvalue()[:2000])
    bomb = io.BytesIO()
    PILImage.new("L", (12000, 12000)).save(bomb, "PNG")
    (folder / "bomb.png").write_bytes(bomb.getvalue())
    return {
        "empty.jpg": "empty file",
        "text.jpg": "not a recognised image",
        "page.png": "not a recognised image",
        "truncated.jpg": "truncated",
        "bomb.png": "decompression bomb",
    }


def test_bad_inputs_fail_alone_and_neighbours_in_the_batch_are_done(
    settings: Settings, session_factory, worker_app: Celery
) -> None:
    settings = settings.model_copy(update={"max_image_pixels": 50_000_000})
    good = write_images(settings.inbox, 12)
    expected = bad_inputs(settings.inbox / "bad")
    bad = [settings.inbox / "bad" / name for name in expected]
    items = record(session_factory, good + bad)
    # One message holding everything: good and bad files share batches.
    send_classify(worker_app, items, files_per_message=len(items))
    wait_until(lambda: count(session_factory, ImageStatus.QUEUED) == 0, 60, "all rows settled")

    with transaction(session_factory) as session:
        rows = {Path(i.paths[0].path).name: i for i in session.scalars(select(Image))}
    for path in good:
        row = rows[path.name]
        assert row.status == ImageStatus.DONE, row.error
        assert row.label and 0 < (row.confidence or 0) <= 1 and len(row.topk or []) == 5
        assert row.model_version_id is not None
        assert [t["confidence"] for t in row.topk or []] == sorted(
            [t["confidence"] for t in row.topk or []], reverse=True
        )
    for name, fragment in expected.items():
        row = rows[name]
        assert row.status == ImageStatus.FAILED and fragment in (row.error or ""), (name, row.error)


def test_redelivered_message_adds_no_second_prediction(
    settings: Settings, session_factory, worker_app: Celery
) -> None:
    items = record(session_factory, write_images(settings.inbox, 5))
    send_classify(worker_app, items, files_per_message=5)
    send_classify(worker_app, items, files_per_message=2)  # the same work, delivered again
    wait_until(lambda: count(session_factory, ImageStatus.DONE) == 5, 60, "5 done")
    client = redis.Redis.from_url(settings.redis_url or "")
    wait_until(lambda: client.llen("classify") == 0, 30, "queue drained")
    time.sleep(1.0)  # the duplicate's batch, taken off the queue, finishes meanwhile
    with transaction(session_factory) as session:
        assert session.execute(select(func.count()).select_from(Prediction)).scalar_one() == 5


def test_file_changed_after_enqueue_is_failed_with_reason(
    settings: Settings, session_factory, worker_app: Celery
) -> None:
    path = write_image(settings.inbox / "swap.jpg", seed=1)
    items = record(session_factory, [path])
    write_image(path, seed=2)  # replaced before the worker reads it
    send_classify(worker_app, items, files_per_message=1)
    wait_until(lambda: count(session_factory, ImageStatus.FAILED) == 1, 60, "row failed")
    with transaction(session_factory) as session:
        assert "changed after it was queued" in (session.scalars(select(Image)).one().error or "")


def test_vanished_file_is_failed_with_reason(
    settings: Settings, session_factory, worker_app: Celery
) -> None:
    path = write_image(settings.inbox / "gone.jpg", seed=3)
    items = record(session_factory, [path])
    path.unlink()
    send_classify(worker_app, items, files_per_message=1)
    wait_until(lambda: count(session_factory, ImageStatus.FAILED) == 1, 60, "row failed")
    with transaction(session_factory) as session:
        assert "vanished" in (session.scalars(select(Image)).one().error or "")


def test_running_worker_switches_to_a_promoted_model_without_restart(
    settings: Settings, session_factory, worker_app: Celery
) -> None:
    first = record(session_factory, write_images(settings.inbox, 3))
    send_classify(worker_app, first, files_per_message=3)
    wait_until(lambda: count(session_factory, ImageStatus.DONE) == 3, 60, "first batch done")

    # Promote a "trained" 2-class model, the way the trainer does: file first, then the row.
    base = modelzoo.build("resnet18", "none")
    small = modelzoo.LoadedModel(
        "resnet18", modelzoo.with_new_head(base.model, 2), ["cat", "dog"], base.preprocessing
    )
    with torch.no_grad():
        small.model.fc.bias.copy_(torch.tensor([5.0, -5.0]))  # always "cat"
    with transaction(session_factory) as session:
        row = ModelVersion(
            name="v-test",
            arch="resnet18",
            weights="",
            classes=["cat", "dog"],
            status=ModelStatus.CANDIDATE.value,
            trained=True,
        )
        session.add(row)
        session.flush()
        model_store.save_version(settings.models_path, row.id, small, {"name": row.name})
        activate(session, row)
        new_id = row.id

    second = record(session_factory, write_images(settings.inbox, 3, start_seed=100))
    time.sleep(0.5)  # past model_check_interval_s
    send_classify(worker_app, second, files_per_message=3)
    wait_until(lambda: count(session_factory, ImageStatus.DONE) == 6, 60, "second batch done")
    with transaction(session_factory) as session:
        labels = {i.sha256: (i.label, i.model_version_id) for i in session.scalars(select(Image))}
    for item in second:
        assert labels[item.sha256] == ("cat", new_id)
    for item in first:
        assert labels[item.sha256][1] != new_id


def hashed_as_the_watcher_does(path: Path) -> SeenFile:
    """The file's SeenFile from the watcher's own hasher, with a stamp (a tick after the write)."""
    if not stamps._kernel_clock_filesystem(path.stat().st_dev):
        pytest.skip("the test folder is not on a local file system with kernel timestamps")
    time.sleep(0.02)
    found = hash_file(str(path))
    assert found.stamp is not None  # settled, on a local file system: the watcher stamps it
    return found


def test_a_file_rewritten_in_place_with_its_old_size_and_mtime_is_caught(
    settings: Settings, session_factory, worker_app: Celery
) -> None:
    """The worker skips its hash only for a file whose stamp is the one the watcher hashed:
    bytes changed in place, at the same size and with the mtime put back, still fail."""
    path = write_image(settings.inbox / "patched.jpg", seed=1)
    with transaction(session_factory) as session:
        items = record_files(session, [hashed_as_the_watcher_does(path)])
    assert items[0].stamp is not None
    before = path.stat()
    time.sleep(0.02)
    with open(path, "r+b") as f:
        f.seek(before.st_size // 2)
        f.write(b"\x00\x01\x02")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    send_classify(worker_app, items, files_per_message=1)
    wait_until(lambda: count(session_factory, ImageStatus.FAILED) == 1, 60, "row failed")
    with transaction(session_factory) as session:
        assert "changed after it was queued" in (session.scalars(select(Image)).one().error or "")


@pytest.mark.parametrize("verify_reads", ["changed", "always"])
def test_a_stamped_file_is_hashed_again_only_when_verify_reads_says_always(
    settings: Settings, session_factory, verify_reads: str
) -> None:
    """A message naming file A under B's content hash, with A's true stamp: a worker that
    trusts stamps does not hash A (B's row gets A's result); VERIFY_READS=always hashes it and
    finds the bytes are not B's."""
    a = write_image(settings.inbox / "a.jpg", seed=1)
    b = write_image(settings.inbox / "b.jpg", seed=2)
    stamp = hashed_as_the_watcher_does(a).stamp
    with transaction(session_factory) as session:
        (item_b,) = record_files(session, [hashed_as_the_watcher_does(b)])
    fast = settings.model_copy(update={"verify_reads": verify_reads})
    app = create_worker_app(fast)
    with start_worker(
        app, pool="threads", concurrency=1, perform_ping_check=False, queues=["classify"]
    ):
        send_classify(app, [WorkItem(str(a), item_b.sha256, stamp)], files_per_message=1)
        wait_until(lambda: count(session_factory, ImageStatus.QUEUED) == 0, 60, "row settled")
    with transaction(session_factory) as session:
        row = session.scalars(select(Image).where(Image.sha256 == item_b.sha256)).one()
    if verify_reads == "changed":
        assert row.status == ImageStatus.DONE, row.error
    else:
        assert row.status == ImageStatus.FAILED
        assert "changed after it was queued" in (row.error or "")
