"""Dynamic batching inside one worker process.

Celery hands each message (a few files) to a task thread; the task submits its files here and
waits. Files from all in-flight messages are pooled into batches of up to ``batch_size``. A
batch that finds the model idle runs at once with what is there; one that finds files already
queued (the system is busy) waits up to ``batch_wait_ms`` to fill (``worker.classify.pending``).
Decoding runs on its own threads as soon as a file is submitted, so it overlaps inference of
the previous batch. Where batched device decode is on (``GPU_DECODE``,
:mod:`worker.classify.batch_decode`) those threads only read, verify and probe each file; its
JPEGs are decoded on the device as the batch is taken, on the stream's own CUDA stream, while
the other stream runs its batch.

The pieces, each in its own module: the files held (:mod:`worker.classify.jobs`), the stream's
lease on the current model and the compile trigger (:mod:`worker.classify.model_lease`), the
writer thread that commits each batch (:mod:`worker.classify.batch_writer`), the busy period's
figures (:mod:`worker.classify.batch_stats`). Threads: ``decode_threads`` decoders, one
inference thread per stream (``worker.model.layout``), one writer.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from sqlalchemy.orm import Session, sessionmaker

from contract import events
from contract.files import verify
from contract.messages import WorkItem
from contract.records import Classified, Failed
from contract.settings import Settings
from imaging.decode import decode
from imaging.perceptual import hash_side, phash
from objectstore.inbox import read_item_stamped
from worker.classify import jobs
from worker.classify.batch_decode import Encoded, assemble, device_decode_wanted, prepare, stack_on
from worker.classify.batch_stats import BatchStats
from worker.classify.batch_writer import BatchWriter, Write
from worker.classify.jobs import Held, Job, Pending
from worker.classify.memory import release_free_memory
from worker.classify.metrics import WorkerMetrics
from worker.classify.model_holder import ModelHolder
from worker.classify.model_lease import ModelLease
from worker.classify.pending import Empty, PendingQueue
from worker.model import null_backend
from worker.model.classifier import Classifier
from worker.model.layout import inference_layout
from worker.model.precision import pick_device
from worker.model.preprocess import Preprocessing, resize_crop

log = logging.getLogger(__name__)

#: How often an idle inference thread wakes to check for a stop request.
IDLE_POLL_S = 0.2


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
        self.metrics = metrics or WorkerMetrics()
        self._queue: PendingQueue[Pending] = PendingQueue()
        self._decoder = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        # Each decoded file's perceptual hash, by content hash, until its batch takes it.
        self._hashes: dict[str, bytes] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._busy_streams = 0
        self._stats = BatchStats()
        self.last_stats: BatchStats | None = None
        self._held = Held()
        self.metrics.images_in_flight.set_function(self._held.files)
        self._lease = ModelLease(holder, settings.torch_compile, settings.batch_size)
        self._writer = BatchWriter(sessions, self.metrics, self._held, self._end_busy_period)
        self._device = pick_device(settings.device)
        self.layout = inference_layout(
            settings.inference_streams, settings.torch_threads, self._device.type
        )
        self._null = settings.inference_backend == "null"
        self._trust_stamps = settings.verify_reads == "changed"
        self.device_decode = not self._null and device_decode_wanted(
            settings.gpu_decode, self._device.type
        )
        self._streams = [
            threading.Thread(target=self._run, name=f"inference-{i}", daemon=True)
            for i in range(self.layout.streams)
        ]
        for stream in self._streams:
            stream.start()

    @property
    def images_done(self) -> int:
        return self._writer.images_done

    # --- producer side (task threads) -----------------------------------------------------------

    def submit(self, items: list[WorkItem]) -> Future[None]:
        job = Job(remaining=len(items))
        if not items:
            job.future.set_result(None)
            return job.future
        prep = self._holder.current().loaded.preprocessing
        self._held.add(items)
        self._queue.put_many(
            [
                Pending(item, job, prep, self._decoder.submit(self._decode, item, prep))
                for item in items
            ]
        )
        return job.future

    def _decode(self, item: WorkItem, prep: Preprocessing) -> np.ndarray | Encoded:
        stats = self._stats
        started, t0 = time.monotonic(), time.thread_time()
        t1 = t2 = None
        try:
            # A file, or an object by GET. The bytes are hashed again unless the file's stamp
            # says they are the ones the watcher hashed (contract.stamps).
            data, stamp = read_item_stamped(self._settings, item.path)
            t1 = time.thread_time()
            if not self._trust_stamps or item.stamp is None or stamp != item.stamp:
                verify(data, item.sha256)
            t2 = time.thread_time()
            if self._null:
                return null_backend.check(data)
            if self.device_decode:
                return prepare(data, prep, self._settings.max_image_pixels)
            image = decode(data, self._settings.max_image_pixels, min_side=hash_side(prep.resize))
            self._hashes[item.sha256] = phash(image)
            return resize_crop(image, prep)
        finally:
            if t1 is not None and t2 is not None:
                stats.add_cpu(read=t1 - t0, hash=t2 - t1, decode=time.thread_time() - t2)
            self.metrics.decode_seconds.observe(time.monotonic() - started)

    # --- the inference threads -------------------------------------------------------------------

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
                with self._lease.lease() as classifier:
                    self._classify(batch, classifier, taken_at)
            except Exception as exc:  # never let an inference thread die
                log.exception("batch of %d failed; its messages will be retried", len(batch))
                for pending in batch:
                    self._hashes.pop(pending.item.sha256, None)
                self._held.let_go(batch)
                jobs.failed(batch, exc)
            finally:
                with self._lock:
                    self._busy_streams -= 1
        self._end_busy_period()

    def _collect(self) -> list[Pending]:
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
        """Log where the time went, once every stream is idle, nothing is queued and every
        batch is written."""
        with self._lock:
            busy = self._busy_streams or len(self._queue) or self._writer.in_flight
            if busy or not self._stats.batches:
                return
            stats, self._stats = self._stats, BatchStats()
            self.last_stats = stats
        log.info("%s", stats.line())
        events.emit(stats.event())
        release_free_memory()

    def _classify(self, batch: list[Pending], classifier: Classifier, taken_at: float) -> None:
        stats = self._stats
        self.metrics.batch_size.observe(len(batch))
        self.metrics.model_version.set(classifier.version_id)
        waited = time.monotonic()
        decoded, good, failed = self._decoded(batch, classifier.loaded.preprocessing)
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
                    phash=self._hashes.pop(p.item.sha256, None),
                )
                for p, s in zip(good, scored, strict=True)
            ]
            self.metrics.inference_seconds.observe(time.monotonic() - inferred)
        queued = time.monotonic()
        stats.add_cpu(infer=time.thread_time() - infer_cpu)
        for pending in batch:  # the failed ones' too
            self._hashes.pop(pending.item.sha256, None)
        self._writer.put(Write(batch, classifier.version_id, classified, failed, taken_at, stats))
        with self._lock:
            stats.decode_wait_s += on_device - waited
            stats.device_decode_s += inferred - on_device
            stats.infer_s += queued - inferred
            stats.write_wait_s += time.monotonic() - queued
        self._lease.served(classifier, len(good))

    def _decoded(
        self, batch: list[Pending], prep: Preprocessing
    ) -> tuple[list[np.ndarray | Encoded], list[Pending], list[Failed]]:
        """Each file's decode, waited for: what decoded, for which files, and what failed."""
        decoded: list[np.ndarray | Encoded] = []
        good: list[Pending] = []
        failed: list[Failed] = []
        for pending in batch:
            try:
                result = pending.decoded.result()
                if pending.prep != prep and not isinstance(result, Encoded):
                    result = self._decode(pending.item, prep)  # the model changed under it
            except Exception as exc:
                failed.append(jobs.failure_of(pending, exc))
                continue
            decoded.append(result)
            good.append(pending)
        return decoded, good, failed

    def _on_device(
        self, decoded: list[np.ndarray | Encoded], good: list[Pending], classifier: Classifier
    ) -> tuple[torch.Tensor | None, list[Pending], list[Failed]]:
        """The batch as one uint8 NHWC tensor on the classifier's device: its JPEGs decoded
        there in one call, and the files the device refused decoded by Pillow here, each
        failing alone, with Pillow's reason, if Pillow cannot either."""
        device, prep = classifier.device, classifier.loaded.preprocessing
        limit = self._settings.max_image_pixels
        try:
            # After the device decoder broke on an earlier batch: Pillow for the rest.
            results = assemble(
                decoded, prep, device, limit, on_device=self.device_decode, pool=self._decoder
            )
        except Exception:  # the device decoder itself is broken: Pillow from now on
            log.exception("batched decode on %s failed; decoding with Pillow from now on", device)
            self.device_decode = False
            results = assemble(decoded, prep, device, limit, on_device=False, pool=self._decoder)
        rows: list[torch.Tensor | np.ndarray] = []
        kept: list[Pending] = []
        failed: list[Failed] = []
        for pending, row in zip(good, results, strict=True):
            if isinstance(row, Exception):
                failed.append(jobs.failure_of(pending, row))
            else:
                rows.append(row)
                kept.append(pending)
        moved = time.monotonic()
        batch = stack_on(device, rows) if rows else None
        with self._lock:
            self._stats.transfer_s += time.monotonic() - moved
        return batch, kept, failed

    # --- the rest ------------------------------------------------------------------------------

    def in_flight(self) -> frozenset[str]:
        """Hashes of the images held right now: submitted, not yet committed or given up."""
        return self._held.hashes()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what was submitted (classified and committed), then stop."""
        self._stop.set()
        for stream in self._streams:
            stream.join(timeout)
        self._writer.stop(timeout)
        self._decoder.shutdown(wait=True, cancel_futures=False)
