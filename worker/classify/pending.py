"""The files waiting for the model, and the rule that turns them into batches.

A batch takes up to ``size`` files. How long it waits to fill depends on what the model was
doing when the batch began:

- **the model was idle** (it had to wait for the first file): the batch runs at once with what
  is there. Waiting would only add ``max_wait`` to the latency of a file dropped into an idle
  system, and buys nothing: while this batch runs, whatever arrives next queues up for the one
  after it (Triton's dynamic batcher does the same with its default zero delay).
- **files were already waiting** (they queued up while the previous batch ran: the system is
  busy): the batch waits up to ``max_wait`` for more, so a steady stream is served in large
  batches.

A message's files are added in one step, so a batch never catches half a message because the
submitting thread was preempted mid-way.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class Empty(Exception):
    """Nothing arrived within the timeout."""


class PendingQueue(Generic[T]):
    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._ready = threading.Condition()

    def put_many(self, items: Iterable[T]) -> None:
        with self._ready:
            self._items.extend(items)
            self._ready.notify_all()

    def __len__(self) -> int:
        with self._ready:
            return len(self._items)

    def take_batch(
        self, size: int, max_wait_s: float, idle_timeout_s: float
    ) -> tuple[list[T], bool]:
        """Up to ``size`` items, by the rule above. Returns ``(batch, was_idle)``; raises
        :class:`Empty` if nothing arrives within ``idle_timeout_s``."""
        items = self._items
        with self._ready:
            was_idle = not items
            if was_idle and not self._ready.wait_for(lambda: bool(items), idle_timeout_s):
                raise Empty
            if not was_idle and len(items) < size:
                deadline = time.monotonic() + max_wait_s
                while len(items) < size:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._ready.wait(remaining)
            return [items.popleft() for _ in range(min(size, len(items)))], was_idle
