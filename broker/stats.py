"""What the broker says about the pipeline: queue depths and the workers that answer a ping."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from broker.app import make_celery
from contract.queues import CLASSIFY_QUEUE, TRAIN_QUEUE
from contract.settings import Settings


@dataclass(frozen=True)
class QueueReport:
    depth: dict[str, int] | None  # messages waiting per queue; None: Redis unreachable
    workers: list[str] | None  # node names of live workers; None: Redis unreachable


def queue_report(settings: Settings, ping_timeout_s: float = 1.0) -> QueueReport:
    """Queue depths and live workers; None where Redis cannot be reached or is not set."""
    if not settings.redis_url:
        return QueueReport(None, None)
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1)
        try:
            depth = {q: int(client.llen(q)) for q in (CLASSIFY_QUEUE, TRAIN_QUEUE)}
        finally:
            client.close()
    except redis.RedisError:
        return QueueReport(None, None)
    app = make_celery(settings)
    try:
        replies = app.control.inspect(timeout=ping_timeout_s).ping() or {}
    except Exception:  # a broker that answered llen but not the broadcast: no workers known
        replies = {}
    finally:
        app.close()
    return QueueReport(depth, sorted(replies))
