"""Dynamic batching inside one worker process.

Celery hands each message (a few files) to a task thread; the task submits its files here and
waits. Files from all in-flight messages are pooled into batches of up to ``batch_size``, or
whatever arrived within ``batch_wait_ms`` of the first, whichever comes first. Decoding runs on
its own threads as soon as a file is submitted, so it overlaps inference of the previous batch.
Each batch is written in one transaction; a message's task returns (and its message is acked)
only after every one of its files is committed.
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
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._thread.start()
        self.images_done = 0

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
        return load_for_model(read_verified(item), prep, self._settings.max_image_pixels)

    # --- the inference thread ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set() or not self._queue.empty():
            try:
                batch = self._collect()
            except queue.Empty:
                continue
            try:
                self._process(batch)
            except Exception as exc:  # never let the inference thread die
                log.exception("batch of %d failed; its messages will be retried", len(batch))
                self._fail_jobs(batch, exc)

    def _collect(self) -> list[_Pending]:
        batch = [self._queue.get(timeout=0.2)]
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

    def _process(self, batch: list[_Pending]) -> None:
        classifier = self._holder.current()
        prep = classifier.loaded.preprocessing
        arrays: list[np.ndarray] = []
        good: list[_Pending] = []
        failed: list[Failed] = []
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
        classified: list[Classified] = []
        if arrays:
            topks = classifier.predict(np.stack(arrays), self._settings.topk)
            classified = [
                Classified(p.item.sha256, top[0]["label"], top[0]["confidence"], top)
                for p, top in zip(good, topks, strict=True)
            ]

        def write() -> None:
            with transaction(self._sessions) as session:
                save_results(session, classifier.version_id, classified, failed)

        try:
            retry_transient(write, what="writing a batch")
        except Exception as exc:
            raise BatchWriteError(f"could not commit batch: {exc}") from exc
        self.images_done += len(batch)
        for pending in batch:
            pending.job.remaining -= 1
            if pending.job.remaining == 0 and not pending.job.future.done():
                pending.job.future.set_result(None)

    @staticmethod
    def _fail_jobs(batch: list[_Pending], exc: Exception) -> None:
        for pending in batch:
            if not pending.job.future.done():
                pending.job.future.set_exception(exc)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what was submitted, then stop."""
        self._stop.set()
        self._thread.join(timeout)
        self._decoder.shutdown(wait=True, cancel_futures=False)
