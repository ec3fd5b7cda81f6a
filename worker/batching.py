"""Dynamic batching inside one worker process.

Celery hands each message (a few files) to a task thread; the task submits its files here and
waits. Files from all in-flight messages are pooled into batches of up to ``batch_size``, or
whatever arrived within ``batch_wait_ms`` of the first, whichever comes first. Decoding runs on
its own threads as soon as a file is submitted, so it overlaps inference of the previous batch.
Each batch is written in one transaction, on a writer thread, while the next batch runs through
the model; a message's task returns (and its message is acked) only after every one of its
files is committed.

Threads: ``decode_threads`` decoders, one inference thread, one writer thread. Inference runs
on its own thread rather than a Celery pool thread, and never waits for the database: on a
2-core CPU, committing a batch on the inference thread left the model idle ~8% of the time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import stat
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.ledger import Classified, Failed, WorkItem, save_results
from inbox_classifier.retry import retry_transient
from inbox_classifier.settings import Settings
from worker.model_holder import ModelHolder
from worker.preprocess import BadImage, Preprocessing, load_for_model

log = logging.getLogger(__name__)


class BatchWriteError(RuntimeError):
    """The batch could not be committed (transient); the message should be retried."""


@dataclass
class _Job:
    """One message's files; its future resolves when all of them are committed."""

    remaining: int
    future: Future[None] = field(default_factory=Future)


@dataclass
class _Pending:
    item: WorkItem
    job: _Job
    prep: Preprocessing
    decoded: Future[np.ndarray]


@dataclass
class _Write:
    """One batch's outcome, on its way to the writer thread."""

    batch: list[_Pending]
    version_id: int
    classified: list[Classified]
    failed: list[Failed]


@dataclass
class BatchStats:
    """Where the inference thread's time went during one busy period (for the log line that
    ends it, and for benchmarks)."""

    images: int = 0
    batches: int = 0
    started: float = 0.0
    decode_wait_s: float = 0.0  # the model waiting for decoders
    infer_s: float = 0.0
    write_wait_s: float = 0.0  # the model waiting for the writer (back-pressure)
    write_s: float = 0.0  # on the writer thread
    # CPU seconds (thread CPU clocks): where the process's CPU went besides the model.
    process_cpu0: float = 0.0
    read_cpu_s: float = 0.0  # reading and re-hashing files
    decode_cpu_s: float = 0.0
    write_cpu_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start(self) -> None:
        self.started = time.monotonic()
        self.process_cpu0 = time.process_time()

    def add_cpu(self, read: float = 0.0, decode: float = 0.0, write: float = 0.0) -> None:
        with self.lock:
            self.read_cpu_s += read
            self.decode_cpu_s += decode
            self.write_cpu_s += write

    def line(self) -> str:
        wall = time.monotonic() - self.started
        cpu = time.process_time() - self.process_cpu0
        rest = cpu - self.read_cpu_s - self.decode_cpu_s - self.write_cpu_s
        return (
            f"classified {self.images} image(s) in {self.batches} batch(es) in {wall:.2f}s "
            f"({self.images / wall if wall > 0 else 0:.1f} img/s): inference {self.infer_s:.2f}s, "
            f"waiting for decode {self.decode_wait_s:.2f}s, for the writer "
            f"{self.write_wait_s:.2f}s; writing {self.write_s:.2f}s. CPU {cpu:.2f}s: read+verify "
            f"{self.read_cpu_s:.2f}, decode {self.decode_cpu_s:.2f}, write {self.write_cpu_s:.2f}, "
            f"model and the rest {rest:.2f}"
        )


def read_verified(item: WorkItem) -> bytes:
    """The file's bytes, if it is still a regular file with the content that was queued."""
    try:
        # O_NONBLOCK: a FIFO swapped in for the file must not hang the reader.
        fd = os.open(item.path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BadImage("file vanished before it could be read") from None
    except OSError as exc:
        raise BadImage(f"file cannot be opened: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BadImage("not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read()
    except OSError as exc:
        raise BadImage(f"file cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if hashlib.sha256(data).hexdigest() != item.sha256:
        raise BadImage("file changed after it was queued (content hash differs)")
    return data


class BatchEngine:
    def __init__(
        self, settings: Settings, holder: ModelHolder, sessions: sessionmaker[Session]
    ) -> None:
        self._settings = settings
        self._holder = holder
        self._sessions = sessions
        self._queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._decoder = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        # At most one batch committing and one waiting: the model runs ahead of the database
        # by a batch or two, never by an unbounded amount.
        self._writes: queue.Queue[_Write | None] = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        self._stats = BatchStats()
        self.last_stats: BatchStats | None = None
        self.images_done = 0
        self._writer = threading.Thread(target=self._write_loop, name="writer", daemon=True)
        self._writer.start()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._thread.start()

    # --- producer side (task threads) -----------------------------------------------------------

    def submit(self, items: list[WorkItem]) -> Future[None]:
        job = _Job(remaining=len(items))
        if not items:
            job.future.set_result(None)
            return job.future
        prep = self._holder.current().loaded.preprocessing
        for item in items:
            decoded = self._decoder.submit(self._decode, item, prep)
            self._queue.put(_Pending(item, job, prep, decoded))
        return job.future

    def _decode(self, item: WorkItem, prep: Preprocessing) -> np.ndarray:
        stats = self._stats
        t0 = time.thread_time()
        try:
            data = read_verified(item)
        finally:
            t1 = time.thread_time()
        try:
            return load_for_model(data, prep, self._settings.max_image_pixels)
        finally:
            stats.add_cpu(read=t1 - t0, decode=time.thread_time() - t1)

    # --- the inference thread ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set() or not self._queue.empty():
            try:
                batch = self._collect()
            except queue.Empty:
                self._end_busy_period()
                continue
            try:
                self._process(batch)
            except Exception as exc:  # never let the inference thread die
                log.exception("batch of %d failed; its messages will be retried", len(batch))
                self._fail_jobs(batch, exc)
        self._end_busy_period()
        self._writes.put(None)  # the writer finishes what it has, then stops

    def _collect(self) -> list[_Pending]:
        batch = [self._queue.get(timeout=0.2)]
        if not self._stats.batches:
            self._stats.start()
        size = self._settings.batch_size
        deadline = time.monotonic() + self._settings.batch_wait_ms / 1000
        while len(batch) < size:
            remaining = deadline - time.monotonic()
            try:
                batch.append(
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
        return batch

    def _end_busy_period(self) -> None:
        if self._stats.batches:
            log.info("%s", self._stats.line())
            self.last_stats = self._stats
            self._stats = BatchStats()

    def _process(self, batch: list[_Pending]) -> None:
        stats = self._stats
        classifier = self._holder.current()
        prep = classifier.loaded.preprocessing
        arrays: list[np.ndarray] = []
        good: list[_Pending] = []
        failed: list[Failed] = []
        waited = time.monotonic()
        for pending in batch:
            try:
                array = pending.decoded.result()
                if pending.prep != prep:  # the model changed under this file
                    array = self._decode(pending.item, prep)
            except BadImage as exc:
                failed.append(Failed(pending.item.sha256, str(exc)))
                continue
            except Exception as exc:
                log.exception("unexpected error decoding %s", pending.item.path)
                failed.append(
                    Failed(pending.item.sha256, f"decode error: {type(exc).__name__}: {exc}")
                )
                continue
            arrays.append(array)
            good.append(pending)
        inferred = time.monotonic()
        stats.decode_wait_s += inferred - waited
        classified: list[Classified] = []
        if arrays:
            topks = classifier.predict(np.stack(arrays), self._settings.topk)
            classified = [
                Classified(p.item.sha256, top[0]["label"], top[0]["confidence"], top)
                for p, top in zip(good, topks, strict=True)
            ]
        queued = time.monotonic()
        stats.infer_s += queued - inferred
        self._writes.put(_Write(batch, classifier.version_id, classified, failed))
        stats.write_wait_s += time.monotonic() - queued
        stats.batches += 1
        stats.images += len(batch)

    # --- the writer thread ---------------------------------------------------------------------

    def _write_loop(self) -> None:
        while (write := self._writes.get()) is not None:
            started, cpu = time.monotonic(), time.thread_time()
            try:
                self._write(write)
            except Exception as exc:  # never let the writer thread die
                log.exception(
                    "could not commit a batch of %d; retrying its messages", len(write.batch)
                )
                self._fail_jobs(write.batch, exc)
            self._stats.write_s += time.monotonic() - started
            self._stats.add_cpu(write=time.thread_time() - cpu)

    def _write(self, write: _Write) -> None:
        def commit() -> None:
            with transaction(self._sessions) as session:
                save_results(session, write.version_id, write.classified, write.failed)

        try:
            retry_transient(commit, what="writing a batch")
        except Exception as exc:
            raise BatchWriteError(f"could not commit batch: {exc}") from exc
        self.images_done += len(write.batch)
        for pending in write.batch:
            pending.job.remaining -= 1
            if pending.job.remaining == 0 and not pending.job.future.done():
                pending.job.future.set_result(None)

    @staticmethod
    def _fail_jobs(batch: list[_Pending], exc: Exception) -> None:
        for pending in batch:
            if not pending.job.future.done():
                pending.job.future.set_exception(exc)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what was submitted (classified and committed), then stop."""
        self._stop.set()
        self._thread.join(timeout)
        self._writer.join(timeout)
        self._decoder.shutdown(wait=True, cancel_futures=False)
