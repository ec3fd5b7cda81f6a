"""Dynamic batching inside one worker process.

Celery hands each message (a few files) to a task thread; the task submits its files here and
waits. Files from all in-flight messages are pooled into batches of up to ``batch_size``. A
batch that finds the model idle runs at once with what is there; one that finds files already
queued (the system is busy) waits up to ``batch_wait_ms`` to fill (``worker.pending``).
Decoding runs on its own threads as soon as a file is submitted, so it overlaps inference of
the previous batch. Where batched device decode is on (``GPU_DECODE``, :mod:`worker.batch_decode`)
those threads only read, verify and probe each file; its JPEGs are decoded on the device as the
batch is taken, on the stream's own CUDA stream, while the other stream runs its batch.
Each batch is written in one transaction, on a writer thread, while the next batch runs through
the model; a message's task returns (and its message is acked) only after every one of its
files is committed.

Threads: ``decode_threads`` decoders, one inference thread per stream (``worker.layout``), one
writer thread. Inference runs on its own threads rather than Celery's pool threads, and never
waits for the database: committing on an inference thread would leave the model idle while
SQLite syncs.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sqlalchemy.orm import Session, sessionmaker

from contract.backoff import retry
from contract.failures import FailureKind, Unusable
from contract.files import read_verified as read_file
from contract.messages import WorkItem
from contract.paths import from_ledger
from contract.records import Classified, Failed
from contract.settings import Settings
from db.engine import transaction
from db.errors import is_transient
from db.ledger import SavedBatch, save_batch
from worker.batch_decode import Encoded, assemble, prepare, stack_on
from worker.classifier import Classifier, CompileState, compile_blocker
from worker.layout import inference_layout
from worker.memory import release_free_memory
from worker.metrics import WorkerMetrics
from worker.model_holder import ModelHolder
from worker.pending import Empty, PendingQueue
from worker.precision import pick_device
from worker.preprocess import Preprocessing, load_for_model

log = logging.getLogger(__name__)

#: A model is compiled (torch.compile, on a background thread, where TORCH_COMPILE allows) once
#: it has classified this many images: a worker that sees a handful of files never pays for a
#: compilation; a busy one switches to the compiled model after it is built.
COMPILE_AFTER_IMAGES = 256


#: How often an idle inference thread wakes to check for a stop request.
IDLE_POLL_S = 0.2


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
    # Decoded by Pillow, or (batched device decode) the bytes the device will decode.
    decoded: Future[np.ndarray | Encoded]


@dataclass
class _Write:
    """One batch's outcome, on its way to the writer thread."""

    batch: list[_Pending]
    version_id: int
    classified: list[Classified]
    failed: list[Failed]
    taken_at: float  # monotonic: when the batch was taken off the queue


@dataclass
class BatchStats:
    """Where the inference thread's time went during one busy period (for the log line that
    ends it, and for benchmarks)."""

    images: int = 0
    failed: int = 0  # of ``images``: could not be classified (bad input)
    batches: int = 0
    started: float = 0.0
    started_wall: float = 0.0
    decode_wait_s: float = 0.0  # the model waiting for decoders
    infer_s: float = 0.0
    device_decode_s: float = 0.0  # batched JPEG decode on the device, inference thread
    write_wait_s: float = 0.0  # the model waiting for the writer (back-pressure)
    write_s: float = 0.0  # on the writer thread
    # CPU seconds (thread CPU clocks): where the process's CPU went besides the model.
    process_cpu0: float = 0.0
    read_cpu_s: float = 0.0  # reading and re-hashing files
    decode_cpu_s: float = 0.0
    write_cpu_s: float = 0.0
    infer_cpu_s: float = 0.0  # the inference threads themselves (torch's helpers not included)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start(self) -> None:
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.process_cpu0 = time.process_time()

    def add_cpu(
        self, read: float = 0.0, decode: float = 0.0, write: float = 0.0, infer: float = 0.0
    ) -> None:
        with self.lock:
            self.read_cpu_s += read
            self.decode_cpu_s += decode
            self.write_cpu_s += write
            self.infer_cpu_s += infer

    def line(self) -> str:
        wall = time.monotonic() - self.started
        cpu = time.process_time() - self.process_cpu0
        rest = cpu - self.read_cpu_s - self.decode_cpu_s - self.write_cpu_s - self.infer_cpu_s
        return (
            f"classified {self.images} image(s) ({self.failed} failed) in {self.batches} "
            f"batch(es) in {wall:.2f}s from "
            f"{time.strftime('%H:%M:%S', time.localtime(self.started_wall))}"
            f".{int(self.started_wall * 1000) % 1000:03d} "
            f"({self.images / wall if wall > 0 else 0:.1f} img/s): inference {self.infer_s:.2f}s, "
            f"device decode {self.device_decode_s:.2f}s, "
            f"waiting for decode {self.decode_wait_s:.2f}s, for the writer "
            f"{self.write_wait_s:.2f}s; writing {self.write_s:.2f}s. CPU {cpu:.2f}s: read+verify "
            f"{self.read_cpu_s:.2f}, decode {self.decode_cpu_s:.2f}, inference threads "
            f"{self.infer_cpu_s:.2f}, write {self.write_cpu_s:.2f}, the rest (Celery, torch's "
            f"helper threads) {rest:.2f}"
        )


def device_decode_wanted(mode: str, device_type: str) -> bool:
    """Whether ``GPU_DECODE`` (``mode``) asks for batched device decode on a ``device_type``
    ('cpu', 'cuda') device."""
    if mode == "auto":
        return device_type == "cuda"
    return mode == "on"


def read_verified(item: WorkItem, max_bytes: int) -> bytes:
    """The file's bytes, if it is still a regular file of at most ``max_bytes`` with the
    content that was queued. Raises :class:`~contract.failures.Unusable` otherwise."""
    return read_file(from_ledger(item.path), item.sha256, max_bytes)


class BatchEngine:
    def __init__(
        self,
        settings: Settings,
        holder: ModelHolder,
        sessions: sessionmaker[Session],
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._settings = settings
        self._holder = holder
        self._sessions = sessions
        self.metrics = metrics or WorkerMetrics()
        self._queue: PendingQueue[_Pending] = PendingQueue()
        self._decoder = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        # At most one batch committing and one waiting: the model runs ahead of the database
        # by a batch or two, never by an unbounded amount.
        self._writes: queue.Queue[_Write | None] = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        self._stats = BatchStats()
        self.last_stats: BatchStats | None = None
        # Streams running a batch, and the classifiers they hold (id -> (classifier, users)):
        # an old model's compiled code is released once no stream uses it any more.
        self._lock = threading.Lock()
        self._busy_streams = 0
        self._in_use: dict[int, tuple[Classifier, int]] = {}
        self._held: dict[str, int] = {}  # sha256 -> files held (submitted, not yet settled)
        self.metrics.images_in_flight.set_function(self._files_held)
        self.images_done = 0
        self._device = pick_device(settings.device)
        self.layout = inference_layout(
            settings.inference_streams, settings.torch_threads, self._device.type
        )
        self.device_decode = device_decode_wanted(settings.gpu_decode, self._device.type)
        self._writer = threading.Thread(target=self._write_loop, name="writer", daemon=True)
        self._writer.start()
        self._streams = [
            threading.Thread(target=self._run, name=f"inference-{i}", daemon=True)
            for i in range(self.layout.streams)
        ]
        for stream in self._streams:
            stream.start()

    # --- producer side (task threads) -----------------------------------------------------------

    def submit(self, items: list[WorkItem]) -> Future[None]:
        job = _Job(remaining=len(items))
        if not items:
            job.future.set_result(None)
            return job.future
        prep = self._holder.current().loaded.preprocessing
        with self._lock:
            for item in items:
                self._held[item.sha256] = self._held.get(item.sha256, 0) + 1
        self._queue.put_many(
            [
                _Pending(item, job, prep, self._decoder.submit(self._decode, item, prep))
                for item in items
            ]
        )
        return job.future

    def _decode(self, item: WorkItem, prep: Preprocessing) -> np.ndarray | Encoded:
        stats = self._stats
        started, t0 = time.monotonic(), time.thread_time()
        t1: float | None = None
        try:
            data = read_verified(item, self._settings.file_byte_limit)
            t1 = time.thread_time()
            if self.device_decode:
                return prepare(data, prep, self._settings.max_image_pixels)
            return load_for_model(data, prep, self._settings.max_image_pixels)
        finally:
            if t1 is not None:
                stats.add_cpu(read=t1 - t0, decode=time.thread_time() - t1)
            self.metrics.decode_seconds.observe(time.monotonic() - started)

    # --- the inference thread ------------------------------------------------------------------

    def _run(self) -> None:
        # Per thread: each stream runs its batches on its own share of the cores, and on a GPU
        # its own CUDA stream, so one stream's decode and copies overlap the other's model.
        torch.set_num_threads(self.layout.threads_per_stream)
        context: Any = (
            torch.cuda.stream(torch.cuda.Stream(self._device))
            if self._device.type == "cuda"
            else contextlib.nullcontext()
        )
        with context:
            self._serve()

    def _serve(self) -> None:
        while not self._stop.is_set() or len(self._queue):
            try:
                batch = self._collect()
            except Empty:
                self._end_busy_period()
                continue
            taken_at = time.monotonic()
            try:
                self._process(batch, taken_at)
            except Exception as exc:  # never let an inference thread die
                log.exception("batch of %d failed; its messages will be retried", len(batch))
                self._fail_jobs(batch, exc)
            finally:
                with self._lock:
                    self._busy_streams -= 1
        self._end_busy_period()

    def _collect(self) -> list[_Pending]:
        s = self._settings
        batch, _ = self._queue.take_batch(
            s.batch_size, s.batch_wait_ms / 1000, idle_timeout_s=IDLE_POLL_S
        )
        with self._lock:
            self._busy_streams += 1
            if not self._stats.batches and not self._stats.started:
                self._stats.start()
        return batch

    def _end_busy_period(self) -> None:
        """Log where the time went, once every stream is idle and nothing is queued."""
        with self._lock:
            if self._busy_streams or len(self._queue) or not self._stats.batches:
                return
            stats, self._stats = self._stats, BatchStats()
            self.last_stats = stats
        log.info("%s", stats.line())
        release_free_memory()

    def _process(self, batch: list[_Pending], taken_at: float) -> None:
        classifier = self._acquire()
        try:
            self._classify(batch, classifier, taken_at)
        finally:
            self._release(classifier)

    def _acquire(self) -> Classifier:
        classifier = self._holder.current()
        with self._lock:
            _, users = self._in_use.get(id(classifier), (classifier, 0))
            self._in_use[id(classifier)] = (classifier, users + 1)
        return classifier

    def _release(self, classifier: Classifier) -> None:
        with self._lock:
            _, users = self._in_use.pop(id(classifier))
            if users > 1:
                self._in_use[id(classifier)] = (classifier, users - 1)
                return
        if (
            classifier.compile_state is CompileState.COMPILED
            and classifier is not self._holder.current()
        ):
            self._retire(classifier)

    def _classify(self, batch: list[_Pending], classifier: Classifier, taken_at: float) -> None:
        stats = self._stats
        metrics = self.metrics
        metrics.batch_size.observe(len(batch))
        metrics.model_version.set(classifier.version_id)
        prep = classifier.loaded.preprocessing
        decoded: list[np.ndarray | Encoded] = []
        good: list[_Pending] = []
        failed: list[Failed] = []
        waited = time.monotonic()
        for pending in batch:
            try:
                result = pending.decoded.result()
                if pending.prep != prep and not isinstance(result, Encoded):
                    result = self._decode(pending.item, prep)  # the model changed under it
            except Exception as exc:
                failed.append(self._decode_failure(pending, exc))
                continue
            decoded.append(result)
            good.append(pending)
        on_device = time.monotonic()
        images: np.ndarray | torch.Tensor | None = None
        if any(isinstance(d, Encoded) for d in decoded):
            images, good, device_failed = self._on_device(decoded, good, classifier)
            failed += device_failed
        elif decoded:
            images = np.stack(decoded)  # type: ignore[arg-type]  # all arrays here
        inferred, infer_cpu = time.monotonic(), time.thread_time()
        classified: list[Classified] = []
        if images is not None:
            scored = classifier.score(images, self._settings.topk)
            classified = [
                Classified(
                    p.item.sha256,
                    s.topk[0]["label"],
                    s.topk[0]["confidence"],
                    s.topk,
                    needs_review=s.needs_review,
                    sure=s.sure,
                )
                for p, s in zip(good, scored, strict=True)
            ]
        queued = time.monotonic()
        stats.add_cpu(infer=time.thread_time() - infer_cpu)
        if images is not None:
            metrics.inference_seconds.observe(queued - inferred)
        self._writes.put(_Write(batch, classifier.version_id, classified, failed, taken_at))
        with self._lock:
            stats.decode_wait_s += on_device - waited
            stats.device_decode_s += inferred - on_device
            stats.infer_s += queued - inferred
            stats.write_wait_s += time.monotonic() - queued
            stats.batches += 1
            stats.images += len(batch)
            stats.failed += len(failed)
            classifier.served += len(good)
            compile_now = classifier.compile_state is CompileState.EAGER and (
                classifier.served >= COMPILE_AFTER_IMAGES
                # Where it will never compile, say so (once) from the first batch on.
                or compile_blocker(
                    self._settings.torch_compile, classifier.device, classifier.autocast
                )
                is not None
            )
        if compile_now:
            classifier.compile_async(
                [self._settings.batch_size, 1], mode=self._settings.torch_compile
            )

    @staticmethod
    def _decode_failure(pending: _Pending, exc: Exception) -> Failed:
        if isinstance(exc, Unusable):
            return Failed(pending.item.sha256, exc.reason, exc.kind)
        log.exception("unexpected error decoding %s", pending.item.path, exc_info=exc)
        return Failed(
            pending.item.sha256,
            f"decode error: {type(exc).__name__}: {exc}",
            FailureKind.DECODE_ERROR,
        )

    def _on_device(
        self, decoded: list[np.ndarray | Encoded], good: list[_Pending], classifier: Classifier
    ) -> tuple[torch.Tensor | None, list[_Pending], list[Failed]]:
        """The batch as one uint8 NHWC tensor on the classifier's device: its JPEGs decoded
        there in one call, and the files the device refused decoded by Pillow here, each
        failing alone, with Pillow's reason, if Pillow cannot either."""
        device, prep = classifier.device, classifier.loaded.preprocessing
        limit = self._settings.max_image_pixels
        try:
            # After the device decoder broke on an earlier batch: Pillow for the rest.
            results = assemble(decoded, prep, device, limit, on_device=self.device_decode)
        except Exception:  # the device decoder itself is broken: Pillow from now on
            log.exception("batched decode on %s failed; decoding with Pillow from now on", device)
            self.device_decode = False
            results = assemble(decoded, prep, device, limit, on_device=False)
        rows: list[torch.Tensor | np.ndarray] = []
        kept: list[_Pending] = []
        failed: list[Failed] = []
        for pending, row in zip(good, results, strict=True):
            if isinstance(row, Exception):
                failed.append(self._decode_failure(pending, row))
            else:
                rows.append(row)
                kept.append(pending)
        return (stack_on(device, rows) if rows else None), kept, failed

    @staticmethod
    def _retire(old: Classifier) -> None:
        """A new model took over and no stream runs the old one any more: drop its compiled
        code (torch.compile keeps it in a process-wide cache, frozen weights included, until
        reset)."""
        torch._dynamo.reset()
        log.info("released the compiled code of model version %d", old.version_id)

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
            with self._lock:
                self._stats.write_s += time.monotonic() - started
            self._stats.add_cpu(write=time.thread_time() - cpu)

    def _write(self, write: _Write) -> None:
        def commit() -> SavedBatch:
            with transaction(self._sessions) as session:
                return save_batch(session, write.version_id, write.classified, write.failed)

        try:
            saved = retry(commit, transient=is_transient, what="writing a batch")
        except Exception as exc:
            raise BatchWriteError(f"could not commit batch: {exc}") from exc
        self.metrics.committed(
            len(write.classified), (f.kind for f in write.failed), saved.first_results_created_at
        )
        self.metrics.batch_seconds.observe(time.monotonic() - write.taken_at)
        self.images_done += len(write.batch)
        self._let_go(write.batch)
        for pending in write.batch:
            pending.job.remaining -= 1
            if pending.job.remaining == 0 and not pending.job.future.done():
                pending.job.future.set_result(None)

    def _fail_jobs(self, batch: list[_Pending], exc: Exception) -> None:
        self._let_go(batch)
        for pending in batch:
            if not pending.job.future.done():
                pending.job.future.set_exception(exc)

    def _let_go(self, batch: list[_Pending]) -> None:
        with self._lock:
            for pending in batch:
                sha = pending.item.sha256
                left = self._held.get(sha, 0) - 1
                if left > 0:
                    self._held[sha] = left
                else:
                    self._held.pop(sha, None)

    def _files_held(self) -> float:
        with self._lock:
            return float(sum(self._held.values()))

    def in_flight(self) -> frozenset[str]:
        """Hashes of the images held right now: submitted, not yet committed or given up."""
        with self._lock:
            return frozenset(self._held)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what was submitted (classified and committed), then stop."""
        self._stop.set()
        for stream in self._streams:
            stream.join(timeout)
        self._writes.put(None)  # the writer finishes what it has, then stops
        self._writer.join(timeout)
        self._decoder.shutdown(wait=True, cancel_futures=False)
