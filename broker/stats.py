"""What the broker says about the pipeline: queue depths and the workers whose heartbeat is
alive (broker.heartbeat): two Redis reads, no Celery (``status`` answers at once)."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from broker.heartbeat import live_workers
from contract.queues import CLASSIFY_QUEUE, TRAIN_QUEUE
from contract.settings import Settings


@dataclass(frozen=True)
class QueueReport:
    depth: dict[str, int] | None  # messages waiting per queue; None: Redis unreachable
    workers: list[str] | None  # node names of live workers; None: Redis unreachable


def queue_report(settings: Settings) -> QueueReport:
    """Queue depths and live workers; None where Redis cannot be reached or is not set."""
    if not settings.redis_url:
        return QueueReport(None, None)
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1)
        try:
            depth = {q: int(client.llen(q)) for q in (CLASSIFY_QUEUE, TRAIN_QUEUE)}
            workers = [w.node for w in live_workers(client)]
        finally:
            client.close()
    except redis.RedisError:
        return QueueReport(None, None)
    return QueueReport(depth, workers)
