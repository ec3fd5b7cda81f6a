"""Sends recorded work items to the classify queue, several files per message, then marks them
enqueued in the ledger. Runs on its own thread so that Redis being slow or down never delays
recording: rows land in the ledger at once, messages follow when they can.

At least once: an item is dropped from the pending list only after its message was accepted by
the broker. If the process dies first, the rows stay `queued` with no `enqueued_at`, and the
reconciler sends them again.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from collections.abc import Callable, Sequence

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from contract.backoff import Backoff
from contract.messages import WorkItem
from pipeline.enqueue import PartlySent, enqueue, mark
from watcher.stats import StageClock

log = logging.getLogger(__name__)

MAX_PENDING = 100_000  # beyond this, the reconciler is trusted with the rest
MARK_EVERY = 512  # items per mark_enqueued transaction


class Publisher:
    def __init__(
        self,
        app: Celery,
        sessions: sessionmaker[Session],
        files_per_message: int,
        *,
        backoff: Backoff | None = None,
        on_idle: Callable[[], None] = lambda: None,
        clock: StageClock | None = None,
    ) -> None:
        self._on_idle = on_idle  # called after a flush that left nothing to send
        self._clock = clock or StageClock()
        self._app = app
        self._sessions = sessions
        self._per_message = files_per_message
        self._backoff = backoff or Backoff()
        self._lock = threading.Lock()
        self._pending: collections.deque[WorkItem] = collections.deque()
        self._unmarked: list[WorkItem] = []  # sent, not yet marked in the ledger
        # Content handed over and not yet marked: the ledger still says "never sent", so the
        # same bytes recorded under another name meanwhile must not be sent again.
        self._in_flight: set[str] = set()
        # Marks committed since the processor's oldest ledger read that may not have seen
        # them: content -> the mark's generation.
        self._recently_marked: dict[str, int] = {}
        self._generation = 0
        self.wake = threading.Event()
        self.sent_items = 0
        self.sent_messages = 0
        self.failures = 0

    @property
    def unsent(self) -> int:
        with self._lock:
            return len(self._pending)

    def generation(self) -> int:
        """Take this before a ledger read whose work items will be submitted."""
        with self._lock:
            return self._generation

    def submit(self, items: Sequence[WorkItem], read_at: int) -> int:
        """Queue ``items`` from a ledger read that began at generation ``read_at``. Items whose
        content is in flight, or was marked after that read began (the read may predate the
        mark), are dropped as duplicates. Returns how many were queued."""
        with self._lock:
            fresh = [
                i
                for i in items
                if i.sha256 not in self._in_flight
                and self._recently_marked.get(i.sha256, -1) <= read_at
            ]
            # Later reads start at read_at or after: older marks can no longer be missed.
            self._recently_marked = {
                sha: gen for sha, gen in self._recently_marked.items() if gen > read_at
            }
            room = max(0, MAX_PENDING - len(self._pending))
            # Only the sender pops from the left, so excess is refused, not evicted.
            accepted = fresh[:room]
            self._pending.extend(accepted)
            self._in_flight.update(i.sha256 for i in accepted)
        if len(fresh) > room:
            log.warning(
                "%d unsent item(s) not held in memory; their rows stay queued and the "
                "reconciler will send them",
                len(fresh) - room,
            )
        if accepted:
            self.wake.set()
        return len(accepted)

    def run(self, stopping: threading.Event) -> None:
        """Publish until ``stopping`` is set, then make one last attempt unless backing off."""
        while True:
            wait = self._backoff.remaining()
            if not stopping.is_set():
                self.wake.wait(wait if wait > 0 else None)
                self.wake.clear()
            if stopping.is_set():
                if wait == 0 and self._has_work():
                    self.flush()
                break
            if self._backoff.remaining() == 0 and self.flush():
                self._on_idle()
        left = self.unsent + len(self._unmarked)
        if left:
            log.warning(
                "stopping with %d item(s) not sent or not marked; their rows stay queued and "
                "the reconciler will send them",
                left,
            )

    def _has_work(self) -> bool:
        return bool(self.unsent or self._unmarked)

    @property
    def busy(self) -> bool:
        """Items wait to be sent or marked."""
        return self._has_work()

    def flush(self) -> bool:
        """Send everything pending and mark it. False (and a backoff) on the first error."""
        try:
            self._mark()  # what an earlier flush sent but could not mark
            while self.unsent:
                self._enqueue_some()
        except Exception as exc:
            self.failures += 1
            delay = self._backoff.failed()
            log.error(
                "could not enqueue %d item(s) (%s: %s); retrying in %.1fs "
                "(the rows stay queued in the ledger)",
                self.unsent + len(self._unmarked),
                type(exc).__name__,
                exc,
                delay,
            )
            return False
        self._backoff.succeeded()
        return True

    def _enqueue_some(self) -> None:
        """Up to MARK_EVERY items, ``files_per_message`` per message, marked in one
        transaction. An item leaves the pending list only once the broker took it; one sent
        but not marked waits in ``_unmarked`` for the next flush (never sent twice)."""
        with self._lock:
            chunk = list(itertools.islice(self._pending, MARK_EVERY))
        try:
            with self._clock.stage("publish"):
                done = enqueue(self._app, self._sessions, chunk, self._per_message)
        except PartlySent as exc:
            self._sent(exc.sent, messages=-(-len(exc.sent) // self._per_message))
            if exc.marked:
                self._marked(exc.sent)
            else:
                self._unmarked = list(exc.sent)
            raise
        self._sent(chunk, done.messages)
        self._marked(chunk)

    def _sent(self, items: Sequence[WorkItem], messages: int) -> None:
        with self._lock:
            for _ in items:
                self._pending.popleft()
        self.sent_items += len(items)
        self.sent_messages += messages

    def _mark(self) -> None:
        if self._unmarked:
            mark(self._sessions, self._unmarked)
            self._marked(self._unmarked)
            self._unmarked = []

    def _marked(self, items: Sequence[WorkItem]) -> None:
        with self._lock:
            self._generation += 1
            for item in items:
                self._in_flight.discard(item.sha256)
                self._recently_marked[item.sha256] = self._generation
