"""Each worker says it is alive in Redis itself: a key per worker, rewritten every
:data:`EVERY_S` seconds and left to expire :data:`TTL_S` seconds after its last write. Anyone
with the Redis URL reads who is alive at once (``status`` used to wait a second for Celery's
broadcast ping), and a worker that stopped answering, killed or cut off by the network, is known
to be gone within ``TTL_S`` (the reconciler re-sends what it held without waiting for
``REQUEUE_AFTER_S``)."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from dataclasses import dataclass

import redis

log = logging.getLogger(__name__)

PREFIX = "inbox-classifier:worker:"
EVERY_S = 2.0
TTL_S = 10.0


@dataclass(frozen=True)
class LiveWorker:
    node: str
    queues: list[str]
    host: str
    pid: int


def beat(url: str, node: str, queues: list[str], stop: threading.Event) -> threading.Thread:
    """Start a daemon thread that keeps this worker's key alive until ``stop`` is set."""
    value = json.dumps(
        {"node": node, "queues": sorted(queues), "host": socket.gethostname(), "pid": os.getpid()}
    )

    def run() -> None:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        key = PREFIX + node
        try:
            while not stop.is_set():
                try:
                    client.set(key, value, ex=int(TTL_S))
                except redis.RedisError as exc:  # Redis away for a moment: try again
                    log.debug("heartbeat not written: %s", exc)
                stop.wait(EVERY_S)
            client.delete(key)
        except redis.RedisError:
            pass
        finally:
            client.close()

    thread = threading.Thread(target=run, name="heartbeat", daemon=True)
    thread.start()
    return thread


def live_workers(client: redis.Redis) -> list[LiveWorker]:
    """Every worker whose key has not expired."""
    found: list[LiveWorker] = []
    for key in client.scan_iter(match=PREFIX + "*", count=200):
        raw = client.get(key)
        if raw is None:
            continue
        try:
            data = json.loads(raw)
            found.append(
                LiveWorker(
                    str(data["node"]), list(data["queues"]), str(data["host"]), int(data["pid"])
                )
            )
        except (ValueError, KeyError, TypeError):
            continue
    return sorted(found, key=lambda w: w.node)

