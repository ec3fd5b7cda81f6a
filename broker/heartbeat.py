"""Each worker says it is alive in Redis itself: a key per worker, rewritten every
:data:`EVERY_S` seconds and left to expire :data:`TTL_S` seconds after its last write. Anyone
with the Redis URL reads who is alive at once (``status`` used to wait a second for Celery's
broadcast ping), and a worker that stopped answering, killed or cut off by the network, is known
to be gone within ``TTL_S``.

A classify worker also keeps the content hashes it holds (in messages received, prefetched
included, whose tasks have not ended) under :data:`HELD_PREFIX` ``<node>``, written as messages
come and go (:class:`Holdings`), a key that outlives the heartbeat by :data:`HELD_TTL_S`: when
a worker's heartbeat lapses (killed, or cut off by the network), the
reconciler finds what it held there and re-sends those images at once
(:func:`orphaned_holds`), instead of waiting ``REQUEUE_AFTER_S`` for them."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

import redis

log = logging.getLogger(__name__)

PREFIX = "inbox-classifier:worker:"
HELD_PREFIX = "inbox-classifier:held:"
EVERY_S = 2.0
TTL_S = 10.0
#: How long a dead worker's holdings stay readable (the reconciler runs far more often).
HELD_TTL_S = 3600


@dataclass(frozen=True)
class LiveWorker:
    node: str
    queues: list[str]
    host: str
    pid: int


class Holdings:
    """The content hashes a worker holds, in Redis as messages come and go (not at the next
    beat: a worker killed a moment after a message arrived must have said it holds it)."""

    def __init__(self, url: str, node: str) -> None:
        self.key = HELD_PREFIX + node
        self._client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)

    def add(self, hashes: AbstractSet[str]) -> None:
        if hashes:
            self._write(lambda pipe: pipe.sadd(self.key, *hashes).expire(self.key, HELD_TTL_S))

    def remove(self, hashes: AbstractSet[str]) -> None:
        if hashes:
            self._write(lambda pipe: pipe.srem(self.key, *hashes))

    def _write(self, build: Callable[[Any], Any]) -> None:
        try:
            build(self._client.pipeline()).execute()
        except redis.RedisError as exc:  # REQUEUE_AFTER_S still covers what is not said
            log.debug("holdings not written: %s", exc)


def beat(
    url: str,
    node: str,
    queues: list[str],
    stop: threading.Event,
    holdings: Holdings | None = None,
) -> threading.Thread:
    """Start a daemon thread that keeps this worker's key (and its holdings) alive until
    ``stop`` is set."""
    value = json.dumps(
        {"node": node, "queues": sorted(queues), "host": socket.gethostname(), "pid": os.getpid()}
    )

    def run() -> None:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        key, held_key = PREFIX + node, HELD_PREFIX + node
        try:
            while not stop.is_set():
                try:
                    pipe = client.pipeline()
                    pipe.set(key, value, ex=int(TTL_S))
                    if holdings is not None:
                        pipe.expire(held_key, HELD_TTL_S)
                    pipe.execute()
                except redis.RedisError as exc:  # Redis away for a moment: try again
                    log.debug("heartbeat not written: %s", exc)
                stop.wait(EVERY_S)
            # A clean stop finished or gave back what it held (acks_late): nothing to re-send.
            client.delete(key, held_key)
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


def orphaned_holds(client: redis.Redis) -> dict[str, set[str]]:
    """node -> the content hashes it held, for every worker whose heartbeat has lapsed."""
    found: dict[str, set[str]] = {}
    for key in client.scan_iter(match=HELD_PREFIX + "*", count=200):
        node = (key.decode() if isinstance(key, bytes) else str(key))[len(HELD_PREFIX) :]
        if client.exists(PREFIX + node):
            continue  # alive: what it holds is its own
        found[node] = {m.decode() if isinstance(m, bytes) else str(m) for m in client.smembers(key)}
    return found


def release(client: redis.Redis, node: str) -> None:
    """Forget a dead worker's holdings (once they were re-sent)."""
    client.delete(HELD_PREFIX + node)
