"""A classify worker's Prometheus metrics: what its batching engine did, in its own registry.

Each worker process serves them on ``METRICS_PORT`` (``up`` gives each worker its own port),
from the process that runs the tasks, once Celery's ``worker_init`` fires (``worker.tasks``):
never at import, never in a parent that forks. Observing is a histogram or counter update per
batch or image (a short lock inside prometheus_client each), never held across inference.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)

from contract.clock import as_utc, utcnow
from contract.failures import FailureKind
from contract.settings import Settings
from db.models import ImageStatus

log = logging.getLogger(__name__)

PREFIX = "inbox_classifier_"
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# From a few milliseconds (one small JPEG, a batch of one on a GPU) to a backlog's minutes.
DECODE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DROP_TO_ROW_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


class WorkerMetrics:
    """The metrics of one batching engine. Its own registry, not prometheus_client's global
    one: a test process that runs several workers one after another counts each apart."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.batch_size = Histogram(
            PREFIX + "batch_size",
            "Images per inference batch.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            PREFIX + "batch_seconds",
            "Seconds from a batch being taken off the queue to its commit.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.decode_seconds = Histogram(
            PREFIX + "decode_seconds",
            "Seconds to read, verify and decode one file, on a decode thread (failures too).",
            buckets=DECODE_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            PREFIX + "inference_seconds",
            "Seconds the model took for one batch.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.drop_to_row_seconds = Histogram(
            PREFIX + "drop_to_row_seconds",
            "Seconds from the watcher recording an image to the commit of its first result.",
            buckets=DROP_TO_ROW_BUCKETS,
            registry=r,
        )
        self.images = Counter(
            PREFIX + "images",
            "Images committed, by outcome and failure kind (kind is empty for done).",
            ["outcome", "kind"],
            registry=r,
        )
        self.images_in_flight = Gauge(
            PREFIX + "images_in_flight",
            "Images held by this worker: received, not yet committed.",
            registry=r,
        )
        self.model_version = Gauge(
            PREFIX + "model_version",
            "Ledger id (model_versions.id) of the model the last batch ran on; 0 before one.",
            registry=r,
        )
        # RSS and CPU of the worker process (docs/performance.md, "Memory").
        ProcessCollector(registry=r)
        self._done = self.images.labels(outcome=ImageStatus.DONE.value, kind="")
        self._server: WSGIServer | None = None

    def committed(
        self, done: int, failed: Iterable[FailureKind], recorded_at: Sequence[datetime]
    ) -> None:
        """A batch's outcome is in the ledger: ``recorded_at`` is when the watcher recorded
        each image that got its first result."""
        self._done.inc(done)
        for kind in failed:
            self.images.labels(outcome=ImageStatus.FAILED.value, kind=kind.value).inc()
        now = utcnow()
        for moment in recorded_at:
            # Clamped: the watcher's clock may run ahead of this machine's.
            self.drop_to_row_seconds.observe(max(0.0, (now - as_utc(moment)).total_seconds()))

    def serve(self, host: str, port: int) -> bool:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread. False (and a logged
        error) when the port cannot be had: the worker runs on without metrics."""
        try:
            self._server, _ = start_http_server(port, host, self.registry)
        except OSError as exc:
            log.error(
                "metrics: cannot listen on %s:%d (%s); this worker runs without metrics",
                host,
                port,
                exc.strerror or exc,
            )
            return False
        log.info("metrics on http://%s:%d/metrics", host, port)
        return True

    def close(self) -> None:
        """Stop serving (the port is free again)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


def serve_metrics(settings: Settings, metrics: WorkerMetrics) -> bool:
    """Serve ``metrics`` on ``settings.web_host``:``settings.metrics_port``; nothing when no
    port is set. Returns whether they are served."""
    if settings.metrics_port is None:
        return False
    return metrics.serve(settings.web_host, settings.metrics_port)
