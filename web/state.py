"""What the web process holds: its settings, its own ledger engine (made on first use), the
Celery app it sends with, and a few short-lived caches for the figures that cost a scan."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from broker.app import make_celery
from broker.locate import with_broker
from broker.stats import QueueReport, queue_report
from contract.settings import Settings
from db import browse
from db.engine import LazySessions, transaction
from pipeline import near_duplicates

T = TypeVar("T")

#: The review page says "10,000+ to go" rather than count a million rows on every request.
REVIEW_COUNT_CAP = 10_000
#: The least time between two background near-duplicate passes.
REGROUP_EVERY_S = 30.0

log = logging.getLogger(__name__)


class Cached(Generic[T]):
    """A value recomputed at most every ``ttl_s`` seconds (counts over a million rows, a
    broadcast ping to the workers: worth seconds of staleness, not a scan per request)."""

    def __init__(self, ttl_s: float, compute: Callable[[], T]) -> None:
        self.ttl_s = ttl_s
        self._compute = compute
        self._lock = threading.Lock()
        self._value: T | None = None
        self._at = -float("inf")

    def get(self) -> T:
        with self._lock:
            if self._value is None or time.monotonic() - self._at >= self.ttl_s:
                self._value = self._compute()
                self._at = time.monotonic()
            return self._value

    def clear(self) -> None:
        with self._lock:
            self._value = None


class WebState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ledger = LazySessions(settings.db_url)
        self._lock = threading.Lock()
        self._celery: Celery | None = None
        self.queues: Cached[QueueReport] = Cached(5.0, self._queue_report)
        self.label_counts: Cached[list[tuple[str, int]]] = Cached(15.0, self._label_counts)
        self.review_backlog: Cached[int] = Cached(5.0, self._review_backlog)
        self._grouping: threading.Thread | None = None
        self._grouped_at = 0.0

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self._ledger.get()

    @property
    def thumbs(self) -> Path:
        return self.settings.data_dir / "thumbs"

    def broker_settings(self) -> Settings:
        return with_broker(self.settings, required=False)

    def celery(self) -> Celery:
        """The app to send tasks with; raises broker.app.NoBroker when there is no Redis."""
        with self._lock:
            if self._celery is None:
                self._celery = make_celery(self.broker_settings())
            return self._celery

    def regroup_soon(self) -> None:
        """Start a near-duplicate grouping pass in the background where images were hashed
        since the last one (at most one at a time, one per :data:`REGROUP_EVERY_S`): the
        review queue and Browse's filter go by the stored groups and never wait for a pass."""
        with self._lock:
            busy = self._grouping is not None and self._grouping.is_alive()
            if busy or time.monotonic() - self._grouped_at < REGROUP_EVERY_S:
                return
            self._grouped_at = time.monotonic()
            self._grouping = threading.Thread(
                target=self._regroup, name="near-duplicates", daemon=True
            )
            self._grouping.start()

    def _regroup(self) -> None:
        try:
            near_duplicates.refresh_if_stale(self.settings, self.sessions)
        except Exception:  # a pass that fails leaves the groups as they were
            log.exception("near-duplicate grouping pass failed")

    def _label_counts(self) -> list[tuple[str, int]]:
        with transaction(self.sessions) as session:
            return browse.label_counts(session)

    def _review_backlog(self) -> int:
        with transaction(self.sessions) as session:
            return browse.review_backlog(session, cap=REVIEW_COUNT_CAP)

    def _queue_report(self) -> QueueReport:
        return queue_report(self.broker_settings())

    def close(self) -> None:
        with self._lock:
            if self._celery is not None:
                self._celery.close()
                self._celery = None
        self._ledger.close()
