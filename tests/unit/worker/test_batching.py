"""The batching rule (worker.classify.pending) on its own, then the real BatchEngine (a real
resnet18,
real files, real SQLite): an idle model never waits to fill a batch, a busy one does."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from contract.settings import Settings
from db.engine import transaction
from db.models import Image, ImageStatus
from tests.helpers.images import write_images
from tests.helpers.pipeline import record, wait_until
from worker.classify import model_lease
from worker.classify.batching import BatchEngine
from worker.classify.model_holder import ModelHolder
from worker.classify.pending import Empty, PendingQueue
from worker.model.layout import InferenceLayout, inference_layout


def put_later(queue: PendingQueue[int], items: list[int], delay: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay), queue.put_many(items)))
    thread.start()
    return thread


# --- the rule -----------------------------------------------------------------------------------


def test_an_idle_batch_runs_at_once_with_what_arrived() -> None:
    queue: PendingQueue[int] = PendingQueue()
    feeder = put_later(queue, [1, 2, 3], 0.05)
    started = time.monotonic()
    batch, was_idle = queue.take_batch(16, max_wait_s=10.0, idle_timeout_s=10.0)
    waited = time.monotonic() - started
    feeder.join()
    assert batch == [1, 2, 3] and was_idle
    assert waited < 5.0, f"an idle batch waited {waited:.2f}s for more files"


def test_a_busy_batch_waits_up_to_max_wait_to_fill() -> None:
    queue: PendingQueue[int] = PendingQueue()
    queue.put_many([1, 2])  # queued while "the previous batch ran"
    feeder = put_later(queue, [3, 4], 0.1)
    batch, was_idle = queue.take_batch(16, max_wait_s=1.0, idle_timeout_s=1.0)
    feeder.join()
    assert batch == [1, 2, 3, 4] and not was_idle


def test_a_busy_batch_stops_waiting_once_full() -> None:
    queue: PendingQueue[int] = PendingQueue()
    queue.put_many([1])
    feeder = put_later(queue, list(range(2, 10)), 0.05)
    started = time.monotonic()
    batch, _ = queue.take_batch(4, max_wait_s=30.0, idle_timeout_s=1.0)
    feeder.join()
    assert batch == [1, 2, 3, 4]
    assert time.monotonic() - started < 15.0
    assert queue.take_batch(16, max_wait_s=0.0, idle_timeout_s=1.0)[0] == [5, 6, 7, 8, 9]


def test_nothing_arriving_raises_empty() -> None:
    with pytest.raises(Empty):
        PendingQueue[int]().take_batch(4, max_wait_s=0.0, idle_timeout_s=0.05)


def test_a_message_is_never_split_by_a_racing_batcher() -> None:
    """Messages of 8 files, batches of 8: every batch is exactly one message."""
    queue: PendingQueue[tuple[int, int]] = PendingQueue()
    messages = 200
    batches: list[list[tuple[int, int]]] = []

    def batcher() -> None:
        taken = 0
        while taken < messages * 8:
            batch, _ = queue.take_batch(8, max_wait_s=0.0, idle_timeout_s=5.0)
            batches.append(batch)
            taken += len(batch)

    thread = threading.Thread(target=batcher)
    thread.start()
    for m in range(messages):
        queue.put_many([(m, i) for i in range(8)])
        if m % 7 == 0:
            time.sleep(0.001)
    thread.join(30)
    assert all(len({m for m, _ in b}) == 1 and len(b) == 8 for b in batches)


def test_layout_one_stream_per_core_on_a_cpu_two_on_a_gpu() -> None:
    assert inference_layout(None, None, "cpu", cores=2) == InferenceLayout(2, 1)
    assert inference_layout(None, None, "cpu", cores=16) == InferenceLayout(4, 4)
    assert inference_layout(None, None, "cuda", cores=16) == InferenceLayout(2, 8)
    assert inference_layout(1, None, "cpu", cores=2) == InferenceLayout(1, 2)
    assert inference_layout(3, 2, "cpu", cores=2) == InferenceLayout(3, 2)


# --- the real engine ------------------------------------------------------------------------------


@pytest.fixture
def engine_for(session_factory: sessionmaker[Session]) -> Iterator:  # type: ignore[type-arg]
    engines: list[BatchEngine] = []

    def make(settings: Settings) -> BatchEngine:
        engine = BatchEngine(settings, ModelHolder(settings, session_factory), session_factory)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop()


def test_a_file_into_an_idle_worker_does_not_wait_for_the_batch_to_fill(
    settings: Settings, session_factory: sessionmaker[Session], engine_for
) -> None:
    # A batch wait long enough that waiting for it could not go unnoticed.
    slow = settings.model_copy(
        update={"batch_wait_ms": 20_000, "batch_size": 16, "inference_streams": 1}
    )
    engine = engine_for(slow)
    first, second = write_images(slow.inbox, 2)
    engine.submit(record(session_factory, [first])).result(timeout=120)  # model loaded
    started = time.monotonic()
    engine.submit(record(session_factory, [second])).result(timeout=60)
    took = time.monotonic() - started
    assert took < 10.0, f"one file into an idle worker took {took:.1f}s (batch wait is 20s)"
    with transaction(session_factory) as session:
        assert set(session.scalars(select(Image.status))) == {ImageStatus.DONE.value}


def test_files_queued_behind_a_running_batch_are_batched_together(
    settings: Settings, session_factory: sessionmaker[Session], engine_for
) -> None:
    fast = settings.model_copy(
        update={"batch_wait_ms": 2_000, "batch_size": 8, "inference_streams": 1}
    )
    engine = engine_for(fast)
    files = write_images(fast.inbox, 1 + 4 + 4)
    warm, first, second, third = (
        record(session_factory, group) for group in (files[:1], files[1:5], files[5:7], files[7:9])
    )
    engine.submit(warm).result(timeout=120)  # the model is loaded
    wait_until(lambda: engine.last_stats is not None, 10, "the warm-up's busy period to end")
    warm_stats = engine.last_stats
    # One message starts a batch on the idle model; two more arrive while that batch runs
    # (held in the model until they have: a small batch can end within a poll interval).
    classifier = engine._holder.current()
    release, score = threading.Event(), classifier.score

    def held_score(*args, **kwargs):  # type: ignore[no-untyped-def]
        release.wait(10)
        return score(*args, **kwargs)

    classifier.score = held_score  # type: ignore[method-assign]
    jobs = [engine.submit(first)]
    wait_until(lambda: len(engine._queue) == 0, 10, "the first batch to start")
    jobs += [engine.submit(second), engine.submit(third)]
    release.set()
    for job in jobs:
        job.result(timeout=60)
    wait_until(lambda: engine.last_stats is not warm_stats, 10, "the busy period to end")
    stats = engine.last_stats
    assert stats is not None
    # 4 files in the first batch (it did not wait), the other two messages pooled in a second.
    assert (stats.images, stats.batches) == (8, 2)


def test_two_streams_classify_everything_once(
    settings: Settings, session_factory: sessionmaker[Session], engine_for
) -> None:
    two = settings.model_copy(
        update={"inference_streams": 2, "torch_threads": 1, "batch_size": 4, "batch_wait_ms": 5}
    )
    engine = engine_for(two)
    assert engine.layout.streams == 2
    names = {t.name for t in threading.enumerate()}
    assert {"inference-0", "inference-1"} <= names
    files = write_images(two.inbox, 40)
    jobs = [engine.submit(record(session_factory, files[i : i + 8])) for i in range(0, 40, 8)]
    for job in jobs:
        job.result(timeout=120)
    wait_until(lambda: engine.last_stats is not None, 10, "the busy period to end")
    assert engine.last_stats is not None and engine.last_stats.images == 40
    assert engine.images_done == 40
    with transaction(session_factory) as session:
        statuses = list(session.scalars(select(Image.status)))
    assert statuses == [ImageStatus.DONE.value] * 40


# --- compilation ----------------------------------------------------------------------------------


def test_with_compile_off_a_worker_says_so_at_its_first_batch_and_stays_eager(
    settings: Settings,
    session_factory: sessionmaker[Session],
    engine_for,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Served by torch: with ONNX Runtime (INFERENCE_BACKEND=auto) nothing is compiled at all.
    engine = engine_for(
        settings.model_copy(update={"torch_compile": "off", "inference_backend": "torch"})
    )
    first, *rest = write_images(settings.inbox, 1 + model_lease.COMPILE_AFTER_IMAGES // 16)
    with caplog.at_level("INFO", logger="worker.model.classifier"):
        engine.submit(record(session_factory, [first])).result(timeout=120)
    classifier = engine._holder.current()
    assert classifier.compile_state == "off"
    assert caplog.text.count("classifying eagerly: TORCH_COMPILE is off") == 1
    classifier.served = model_lease.COMPILE_AFTER_IMAGES  # busy enough to compile, were it on
    engine.submit(record(session_factory, rest)).result(timeout=120)
    assert classifier.compile_state == "off" and classifier._compiled is None
