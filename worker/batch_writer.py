"""The writer thread: commits each batch's outcome in one transaction while the next batch runs
through the model, so inference never waits for the database (committing on an inference
thread would leave the model idle while SQLite syncs). At most one batch committing and one
waiting: the model runs ahead of the database by a batch or two, never by an unbounded amount.
A message's job resolves (and its task returns, and its message is acked) only once every one
of its files is committed."""

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
from db.engine import transaction
from db.errors import is_transient
from db.ledger import SavedBatch, save_batch
from worker import jobs
from worker.batch_stats import BatchStats
from worker.jobs import Held, Pending
from worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)


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
        self._writes: queue.Queue[Write | None] = queue.Queue(maxsize=2)
        self._count_lock = threading.Lock()
        self.in_flight = 0  # handed over, not written yet
        self.images_done = 0
        self._thread = threading.Thread(target=self._loop, name="writer", daemon=True)
        self._thread.start()

    def put(self, write: Write) -> None:
        """Hand a batch over; blocks while two are ahead of it (back-pressure)."""
        with self._count_lock:
            self.in_flight += 1
        self._writes.put(write)

    def stop(self, timeout: float) -> None:
        """Commit what was handed over, then stop."""
        self._writes.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while (write := self._writes.get()) is not None:
            started, cpu = time.monotonic(), time.thread_time()
            first_results = settled = failed = 0
            try:
                first_results = self._write(write)
                settled, failed = len(write.batch), len(write.failed)
            except Exception as exc:  # never let the writer thread die
                log.exception(
                    "could not commit a batch of %d; retrying its messages", len(write.batch)
                )
                self._held.let_go(write.batch)
                jobs.failed(write.batch, exc)
            # Counted once committed: a batch that is retried is not counted twice.
            write.stats.add_written(settled, failed, first_results, time.monotonic() - started)
            write.stats.add_cpu(write=time.thread_time() - cpu)
            with self._count_lock:
                self.in_flight -= 1
            self._on_written()

    def _write(self, write: Write) -> int:
        def commit() -> SavedBatch:
            with transaction(self._sessions) as session:
                return save_batch(session, write.version_id, write.classified, write.failed)

        try:
            saved = retry(commit, transient=is_transient, what="writing a batch")
        except Exception as exc:
            raise BatchWriteError(f"could not commit batch: {exc}") from exc
        self._metrics.committed(
            len(write.classified), (f.kind for f in write.failed), saved.first_results_created_at
        )
        self._metrics.batch_seconds.observe(time.monotonic() - write.taken_at)
        self.images_done += len(write.batch)
        self._held.let_go(write.batch)
        jobs.committed(write.batch)
        return len(saved.first_results_created_at)
