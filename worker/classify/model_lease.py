"""Which classifier each inference stream runs, beside the :class:`~worker.classify.model_holder.
ModelHolder` that decides which is current: a stream leases the current one for a batch, a
model swapped out while streams still run it is let go once the last one returns it (dropping
its compiled code), and a busy model is compiled in the background once it has earned it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from worker.classify.model_holder import ModelHolder
from worker.model.classifier import Classifier, CompileState, compile_blocker

log = logging.getLogger(__name__)

#: A model is compiled (torch.compile, on a background thread, where TORCH_COMPILE allows) once
#: it has classified this many images: a worker that sees a handful of files never pays for a
#: compilation; a busy one switches to the compiled model after it is built.
COMPILE_AFTER_IMAGES = 256


class ModelLease:
    def __init__(self, holder: ModelHolder, compile_mode: str, batch_size: int) -> None:
        self._holder = holder
        self._compile_mode = compile_mode
        self._batch_size = batch_size
        self._lock = threading.Lock()
        self._in_use: dict[int, tuple[Classifier, int]] = {}  # id -> (classifier, streams)

    @contextmanager
    def lease(self) -> Iterator[Classifier]:
        """The current classifier, for one batch."""
        classifier = self._holder.current()
        with self._lock:
            _, users = self._in_use.get(id(classifier), (classifier, 0))
            self._in_use[id(classifier)] = (classifier, users + 1)
        try:
            yield classifier
        finally:
            self._release(classifier)

    def served(self, classifier: Classifier, images: int) -> None:
        """Count a batch; compile the model in the background once it is worth it, or say
        (once, from the first batch) why it never will be."""
        with self._lock:
            classifier.served += images
            compile_now = classifier.compile_state is CompileState.EAGER and (
                classifier.served >= COMPILE_AFTER_IMAGES
                or compile_blocker(self._compile_mode, classifier.device, classifier.autocast)
                is not None
            )
        if compile_now:
            classifier.compile_async([self._batch_size, 1], mode=self._compile_mode)

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
            _retire(classifier)


def _retire(old: Classifier) -> None:
    """A new model took over and no stream runs the old one any more: drop its compiled code
    (torch.compile keeps it in a process-wide cache, frozen weights included, until reset)."""
    torch._dynamo.reset()
    log.info("released the compiled code of model version %d", old.version_id)
