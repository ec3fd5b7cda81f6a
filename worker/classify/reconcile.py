"""The ledger finds what the queue lost: rows still `queued` long after they were sent (a
worker killed mid-batch, Redis restarted or flushed) or never sent (Redis was down) are sent
again. Predictions are unique per (image, model version), so a duplicate delivery is harmless.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from datetime import timedelta

import redis
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from broker import heartbeat
from contract.settings import Settings
from db.engine import transaction
from db.ledger import count_attempt, fail_orphans, find_stuck, queued_items
from pipeline.enqueue import enqueue

log = logging.getLogger(__name__)

LOCK_NAME = "inbox_classifier:reconcile"


def reconcile(
    app: Celery,
    settings: Settings,
    sessions: sessionmaker[Session],
    in_flight: Callable[[], AbstractSet[str]] = frozenset,
) -> int:
    """Re-send stuck rows; returns how many. One reconciler at a time (a Redis lock).

    ``in_flight``: the images the calling worker holds right now (received, not yet committed).
    They are not stuck however long ago they were sent (a backlog waiting its turn, or batches
    running slowly), and a crash of this worker would end its hold anyway."""
    assert settings.redis_url
    client = redis.Redis.from_url(settings.redis_url)
    lock = client.lock(LOCK_NAME, timeout=max(60.0, settings.reconcile_interval_s))
    if not lock.acquire(blocking=False):
        return 0
    try:
        # Workers whose heartbeat lapsed: what they held is re-sent now, not REQUEUE_AFTER_S
        # after it was sent (broker.heartbeat).
        gone = heartbeat.orphaned_holds(client)
        with transaction(sessions) as session:
            # Queued content whose only path now holds other bytes can never be read again.
            fail_orphans(session, timedelta(seconds=settings.requeue_after_s))
            held = in_flight()
            orphaned = queued_items(session, set().union(*gone.values()) - held)
            taken = {w.sha256 for w in orphaned}
            stuck = [
                w
                for w in find_stuck(session, timedelta(seconds=settings.requeue_after_s))
                if w.sha256 not in held and w.sha256 not in taken
            ]
            candidates = [*orphaned, *stuck]
            keep = set(
                count_attempt(session, [w.sha256 for w in candidates], settings.max_attempts)
            )
        items = [w for w in candidates if w.sha256 in keep]
        if items:
            enqueue(app, sessions, items, settings.files_per_message)
        for node in gone:
            heartbeat.release(client, node)
        if orphaned:
            log.warning(
                "%s stopped answering: re-sent %d image(s) it held",
                ", ".join(sorted(gone)),
                len(orphaned),
            )
        if len(items) > len(orphaned):
            log.warning("re-sent %d stuck image(s) from the ledger", len(items) - len(orphaned))
        return len(items)
    finally:
        with contextlib.suppress(redis.exceptions.LockError):
            lock.release()
        client.close()
