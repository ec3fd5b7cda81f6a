"""What the batching engine holds: each message's job (its future resolves once all its files
are committed), each file waiting for the model, and the count of files held per content (the
reconciler leaves those alone)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from contract.failures import FailureKind, Unusable
from contract.messages import WorkItem
from contract.paths import shown
from contract.records import Failed
from worker.classify.batch_decode import Encoded
from worker.model.preprocess import Preprocessing

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One message's files; its future resolves when all of them are committed."""

    remaining: int
    future: Future[None] = field(default_factory=Future)


@dataclass
class Pending:
    """One file of a job, on its way to the model."""

    item: WorkItem
    job: Job
    prep: Preprocessing
    # Decoded by Pillow, or (batched device decode) the bytes the device will decode.
    decoded: Future[np.ndarray | Encoded]


class Held:
    """Files a worker holds (received, not yet committed or given up), by content."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def add(self, items: Iterable[WorkItem]) -> None:
        with self._lock:
            for item in items:
                self._counts[item.sha256] = self._counts.get(item.sha256, 0) + 1

    def let_go(self, batch: Sequence[Pending]) -> None:
        with self._lock:
            for pending in batch:
                sha = pending.item.sha256
                left = self._counts.get(sha, 0) - 1
                if left > 0:
                    self._counts[sha] = left
                else:
                    self._counts.pop(sha, None)

    def files(self) -> float:
        with self._lock:
            return float(sum(self._counts.values()))

    def hashes(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._counts)


def committed(batch: Sequence[Pending]) -> None:
    """Count ``batch``'s files as committed: a job whose files are all in resolves."""
    for pending in batch:
        pending.job.remaining -= 1
        if pending.job.remaining == 0 and not pending.job.future.done():
            pending.job.future.set_result(None)


def failed(batch: Sequence[Pending], exc: BaseException) -> None:
    """``batch`` could not be classified or committed: its jobs fail (their messages are
    retried)."""
    for pending in batch:
        if not pending.job.future.done():
            pending.job.future.set_exception(exc)


def failure_of(pending: Pending, exc: Exception) -> Failed:
    """What a file that could not be decoded is recorded as: its kind and reason; an
    unexpected error is logged with its traceback and recorded as ``decode_error``."""
    if isinstance(exc, Unusable):
        return Failed(pending.item.sha256, exc.reason, exc.kind)
    log.exception("unexpected error decoding %s", shown(pending.item.path), exc_info=exc)
    return Failed(
        pending.item.sha256,
        f"decode error: {type(exc).__name__}: {exc}",
        FailureKind.DECODE_ERROR,
    )
