"""Keys the store's notifications named, from wherever they come (the webhook endpoint,
:mod:`watcher.bucket_events`; the queue, :mod:`watcher.bucket_queue`), waiting for the bucket
watcher's loop (:mod:`watcher.bucket`) to list and read them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from contract.settings import Settings
from watcher.bucket_events import NotificationReceiver
from watcher.bucket_queue import QueueReader

MAX_WAITING = 100_000  # keys held for the loop; beyond, the listing finds the rest


class NotifiedKeys:
    """Keys notified and not yet taken by the watcher's loop (each once, in arrival order)."""

    def __init__(self) -> None:
        self._keys: dict[str, None] = {}
        self._lock = threading.Lock()
        self.arrived = threading.Event()
        self.dropped = 0

    def add(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                if len(self._keys) >= MAX_WAITING:
                    self.dropped += 1  # the next listing finds it
                else:
                    self._keys[key] = None
            self.arrived.set()

    def take(self) -> list[str]:
        with self._lock:
            keys, self._keys = list(self._keys), {}
            self.arrived.clear()
            return keys


@contextmanager
def notifications(
    settings: Settings, bucket: str, stop: threading.Event
) -> Iterator[NotifiedKeys | None]:
    """The notification sources the settings name, running for the block (the endpoint,
    BUCKET_EVENTS_LISTEN; the queue, BUCKET_EVENTS_QUEUE_URL); yields the keys they name, or
    None where there is none."""
    if not (settings.bucket_events_listen or settings.bucket_events_queue_url):
        yield None
        return
    keys = NotifiedKeys()
    receiver = None
    if settings.bucket_events_listen:
        receiver = NotificationReceiver(settings, bucket, keys)
        receiver.start()
    if settings.bucket_events_queue_url:
        QueueReader(settings, bucket, keys, stop).start()  # a daemon thread: ends with ``stop``
    try:
        yield keys
    finally:
        if receiver is not None:
            receiver.stop()
