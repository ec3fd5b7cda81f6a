"""``INFERENCE_BACKEND=null``: everything a worker does but the model, for benchmarks and tests of
the plumbing. It receives each message, reads every file's bytes (at most ``MAX_FILE_BYTES``),
checks them against their content hash and their format's signature, pools them into batches,
writes the results and acknowledges, but neither decodes pixels nor runs a network: every image
gets the same valid distribution over ten classes named ``null-0`` ... ``null-9``.

It cannot pass for a real model: its rows name the version ``base:null:null``, and it becomes
the active model only of a data dir that has no other version (a worker refuses to start it
anywhere else); a real model started later on that data dir takes over as any base does.
"""

from __future__ import annotations

import numpy as np
import torch

from contract.failures import FailureKind, Unusable
from worker.model.modelzoo import LoadedModel
from worker.model.preprocess import Preprocessing

NULL_ARCH = "null"
NULL_WEIGHTS = "null"
NULL_CLASSES = [f"null-{i}" for i in range(10)]
#: Fixed logits: a valid, plainly artificial distribution (null-0 at about 0.47).
_LOGITS = np.linspace(2.0, -2.5, len(NULL_CLASSES), dtype=np.float32)
#: What the batch carries per image instead of pixels.
PLACEHOLDER = np.zeros((1, 1, 3), dtype=np.uint8)
#: The signatures of the formats the worker classifies (the checks the decoder would make first).
SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
    b"P1",
    b"P2",
    b"P3",
    b"P4",
    b"P5",
    b"P6",
)


def null_loaded() -> LoadedModel:
    """The "model": no weights, no layers that compute (the classifier never calls it)."""
    return LoadedModel(
        arch=NULL_ARCH,
        model=torch.nn.Identity(),
        classes=list(NULL_CLASSES),
        preprocessing=Preprocessing(),
    )


def check(data: bytes) -> np.ndarray:
    """The file's bytes look like an image the worker takes (its signature), else
    :class:`Unusable` as the decoder would say; the placeholder the batch carries."""
    if not data:
        raise Unusable(FailureKind.EMPTY, "empty file")
    is_webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    if not (is_webp or data.startswith(SIGNATURES)):
        raise Unusable(FailureKind.NOT_IMAGE, "not an image (no known format signature)")
    return PLACEHOLDER


class NullRunner:
    """Stands where ONNX Runtime would (:class:`worker.model.classifier.Runner`)."""

    precision = "null (no model)"

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return np.tile(_LOGITS, (len(batch), 1))
