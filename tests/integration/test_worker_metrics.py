"""A classify worker's Prometheus metrics, scraped over HTTP from a real worker (Celery threads
pool on the test Redis, a real SQLite ledger, real image files, a real resnet18): they count
exactly what the worker did."""

from __future__ import annotations

import io
import logging
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from PIL import Image as PILImage
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from broker.send import send_classify
from contract.settings import Settings
from db.engine import transaction
from db.models import ImageStatus, ModelStatus, ModelVersion
from inbox_classifier.redis_server import free_port
from tests.helpers.images import write_images
from tests.helpers.pipeline import count, record, wait_until
from worker.classify.metrics import WorkerMetrics, serve_metrics
from worker.model.layout import worker_concurrency
from worker.tasks import create_worker_app

pytestmark = pytest.mark.timeout(300)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def committed(samples: Samples) -> float:
    return sum(v for (name, _), v in samples.items() if name == "inbox_classifier_images_total")


@contextmanager
def worker(settings: Settings) -> Iterator[Celery]:
    app = create_worker_app(settings)
    with start_worker(
        app,
        pool="threads",
        concurrency=worker_concurrency(settings),
        perform_ping_check=False,
        queues=["classify"],
        shutdown_timeout=30,
    ):
        yield app


def write_bad_files(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "text.jpg"
    text.write_text("definitely not a JPEG")  # not_image
    noisy = io.BytesIO()
    PILImage.effect_noise((300, 200), 50).convert("RGB").save(noisy, "JPEG")
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(noisy.getvalue()[:2000])  # corrupt
    return [text, truncated]


def test_metrics_count_exactly_what_the_worker_did(settings: Settings, session_factory) -> None:
    port = free_port()
    settings = settings.model_copy(update={"metrics_port": port})
    good = write_images(settings.inbox, 5)
    bad = write_bad_files(settings.inbox / "bad")
    with worker(settings) as app:
        before = scrape(port)  # served from worker_init, before any task
        assert committed(before) == 0
        assert value(before, "inbox_classifier_batch_size_count") == 0

        items = record(session_factory, good + bad)
        send_classify(app, items, files_per_message=3)
        wait_until(lambda: count(session_factory, ImageStatus.QUEUED) == 0, 120, "rows settled")
        # The counters move right after each commit, on the writer thread.
        wait_until(lambda: committed(scrape(port)) == 7, 30, "7 images counted")
        after = scrape(port)

        # The same work delivered again: counted again, but no second drop-to-row latency.
        send_classify(app, items[:2], files_per_message=2)
        wait_until(lambda: committed(scrape(port)) == 9, 60, "the redelivery counted")
        again = scrape(port)

    assert value(after, "inbox_classifier_images_total", outcome="done", kind="") == 5
    assert value(after, "inbox_classifier_images_total", outcome="failed", kind="not_image") == 1
    assert value(after, "inbox_classifier_images_total", outcome="failed", kind="corrupt") == 1

    batches = value(after, "inbox_classifier_batch_size_count")
    assert batches >= 1
    assert value(after, "inbox_classifier_batch_size_sum") == 7  # every file, in one batch each
    assert value(after, "inbox_classifier_batch_size_bucket", le="512.0") == batches
    assert value(after, "inbox_classifier_batch_seconds_count") == batches  # each committed
    assert 1 <= value(after, "inbox_classifier_inference_seconds_count") <= batches
    assert value(after, "inbox_classifier_decode_seconds_count") == 7
    assert value(after, "inbox_classifier_drop_to_row_seconds_count") == 5
    assert value(after, "inbox_classifier_drop_to_row_seconds_sum") > 0
    assert value(after, "inbox_classifier_images_in_flight") == 0
    assert value(after, "process_resident_memory_bytes") > 0
    with transaction(session_factory) as session:
        active = session.scalars(
            select(ModelVersion).where(ModelVersion.status == ModelStatus.ACTIVE.value)
        ).one()
    assert value(after, "inbox_classifier_model_version") == active.id

    assert value(again, "inbox_classifier_images_total", outcome="done", kind="") == 7
    assert value(again, "inbox_classifier_drop_to_row_seconds_count") == 5
    assert value(again, "inbox_classifier_decode_seconds_count") == 9

    # Its own registry: nothing of it in prometheus_client's global one.
    assert b"inbox_classifier_" not in generate_latest(REGISTRY)


def test_a_worker_whose_metrics_port_is_taken_still_classifies(
    settings: Settings, session_factory, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = settings.model_copy(update={"metrics_port": port})
        quiet = caplog.at_level(logging.ERROR, logger="worker.classify.metrics")
        with quiet, worker(settings) as app:
            send_classify(app, record(session_factory, write_images(settings.inbox, 3)), 3)
            wait_until(lambda: count(session_factory, ImageStatus.DONE) == 3, 120, "3 done")
    assert f"cannot listen on 127.0.0.1:{port}" in caplog.text
    assert "runs without metrics" in caplog.text


def test_serve_metrics_only_with_a_port_and_only_once_per_port(settings: Settings) -> None:
    assert serve_metrics(settings, WorkerMetrics()) is False  # METRICS_PORT unset: no server

    settings = settings.model_copy(update={"metrics_port": free_port()})
    first, second = WorkerMetrics(), WorkerMetrics()
    assert serve_metrics(settings, first) is True
    try:
        assert serve_metrics(settings, second) is False  # in use: an error, not a crash
        assert value(scrape(settings.metrics_port or 0), "inbox_classifier_batch_size_count") == 0
    finally:
        first.close()
    assert serve_metrics(settings, second) is True  # closing gave the port back
    second.close()
