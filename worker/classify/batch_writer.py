"""The writer thread: commits each batch's outcome while the next batch runs through the model,
so inference never waits for the database (committing on an inference thread would leave the
model idle while SQLite syncs). A batch that finds others waiting is committed with them in one
transaction (a group commit, up to :data:`GROUP_IMAGES` images): at a trickle each batch
commits alone, at full speed a commit's fixed cost (the sync, the statements) is shared by
several. At most :data:`QUEUED_WRITES` batches wait: the model runs ahead of the database by
a few batches, never by an unbounded amount. A message's job resolves (and its task returns,
and its message is acked) only once every one of its files is committed."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from contract.backoff import retry
from contract.records import Classified, Failed
from db.batch_write import SavedBatch, save_batch
from db.engine import transaction
from db.errors import is_transient
from worker.classify import jobs
from worker.classify.batch_stats import BatchStats
from worker.classify.jobs import Held, Pending
from worker.classify.metrics import WorkerMetrics

log = logging.getLogger(__name__)

#: Most images committed in one transaction, and most batches waiting for the writer.
GROUP_IMAGES = 256
QUEUED_WRITES = 8


class BatchWriteError(RuntimeError):
    """The batch could not be committed (transient); the message should be retried."""


@dataclass
class Write:
    """One batch's outcome, on its way to the writer thread."""

    batch: list[Pending]
    version_id: int
    classified: list[Classified]
    failed: list[Failed]
    taken_at: float  # monotonic: when the batch was taken off the queue
    stats: BatchStats  # the busy period the batch belongs to (it ends once this is written)


class BatchWriter:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        metrics: WorkerMetrics,
        held: Held,
        on_written: Callable[[], None] = lambda: None,
    ) -> None:
        self._sessions = sessions
        self._metrics = metrics
        self._held = held
        self._on_written = on_written  # a busy period ends only once its batches are written
        self._writes: queue.Queue[Write | None] = queue.Queue(maxsize=QUEUED_WRITES)
        self._count_lock = threading.Lock()
        self.in_flight = 0  # handed over, not written yet
        self.images_done = 0
        self._thread = threading.Thread(target=self._loop, name="writer", daemon=True)
        self._thread.start()

    def put(self, write: Write) -> None:
        """Hand a batch over; blocks while QUEUED_WRITES are ahead of it (back-pressure)."""
        with self._count_lock:
            self.in_flight += 1
        self._writes.put(write)

    def stop(self, timeout: float) -> None:
        """Commit what was handed over, then stop."""
        self._writes.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._writes.get()
            if first is None:
                break
            group, stopping = self._gather(first)
            started, cpu = time.monotonic(), time.thread_time()
            try:
                first_results = self._write(group)
            except Exception as exc:  # never let the writer thread die
                log.exception(
                    "could not commit %d image(s); retrying their messages",
                    sum(len(w.batch) for w in group),
                )
                for write in group:
                    self._held.let_go(write.batch)
                    jobs.failed(write.batch, exc)
                first_results = None
            seconds = (time.monotonic() - started) / len(group)
            cpu_s = (time.thread_time() - cpu) / len(group)
            for write in group:
                # Counted once committed: a batch that is retried is not counted twice.
                if first_results is None:
                    write.stats.add_written(0, 0, 0, seconds)
                else:
                    firsts = sum(1 for c in write.classified if c.sha256 in first_results)
                    write.stats.add_written(len(write.batch), len(write.failed), firsts, seconds)
                write.stats.add_cpu(write=cpu_s)
            with self._count_lock:
                self.in_flight -= len(group)
            self._on_written()

    def _gather(self, first: Write) -> tuple[list[Write], bool]:
        """``first`` and the batches already waiting behind it, up to GROUP_IMAGES images;
        and whether the stop signal was among them."""
        group, images = [first], len(first.batch)
        while images < GROUP_IMAGES:
            try:
                more = self._writes.get_nowait()
            except queue.Empty:
                break
            if more is None:
                return group, True
            group.append(more)
            images += len(more.batch)
        return group, False

    def _write(self, group: list[Write]) -> frozenset[str]:
        """Commit ``group`` in one transaction; the hashes that got their first result."""

        def commit() -> list[SavedBatch]:
            with transaction(self._sessions) as session:
                return [
                    save_batch(
                        session,
                        version,
                        [c for w in group if w.version_id == version for c in w.classified],
                        [f for w in group if w.version_id == version for f in w.failed],
                    )
                    for version in dict.fromkeys(w.version_id for w in group)
                ]

        try:
            saved = retry(commit, transient=is_transient, what="writing a batch")
        except Exception as exc:
            raise BatchWriteError(f"could not commit batch: {exc}") from exc
        now = time.monotonic()
        for write in group:
            self._metrics.batch_seconds.observe(now - write.taken_at)
        self._metrics.committed(
            sum(len(w.classified) for w in group),
            (f.kind for w in group for f in w.failed),
            [at for s in saved for at in s.first_results_created_at],
        )
        for write in group:
            self.images_done += len(write.batch)
            self._held.let_go(write.batch)
            jobs.committed(write.batch)
        return frozenset().union(*(s.first_results for s in saved))
