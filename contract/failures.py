"""Why a file could not be classified: a *kind* the code decides by, and a reason in words for
the person reading it. The ledger stores both (``images.error_kind`` and ``images.error``)."""

from __future__ import annotations

from enum import StrEnum


class FailureKind(StrEnum):
    # The *path* failed, not the content: the same bytes seen at another path can still be
    # classified, so the ledger queues them again when the watcher sees them.
    VANISHED = "vanished"  # the file was gone before it could be read
    UNREADABLE = "unreadable"  # it could not be opened or read (permissions, I/O error)
    NOT_REGULAR = "not_regular"  # a FIFO, device or folder stands at the path now
    CHANGED = "changed"  # its content no longer has the hash it was queued with
    # The content failed: permanent for these bytes.
    EMPTY = "empty"  # zero bytes
    NOT_IMAGE = "not_image"  # not an image format, or an unreadable header
    CORRUPT = "corrupt"  # truncated or corrupt image data, or no pixels
    TOO_LARGE = "too_large"  # over the pixel limit (decompression bomb guard)
    DECODE_ERROR = "decode_error"  # the decoder failed in an unexpected way
    # The ledger gave up on the row.
    GAVE_UP = "gave_up"  # delivered max_attempts times without a result
    ORPHANED = "orphaned"  # its only path now holds other bytes
    OTHER = "other"  # anything else (rows written before kinds existed, unrecognised)


PATH_KINDS = frozenset(
    {FailureKind.VANISHED, FailureKind.UNREADABLE, FailureKind.NOT_REGULAR, FailureKind.CHANGED}
)


def is_path_failure(kind: FailureKind | str | None) -> bool:
    """True when the failure belongs to the path, so the content may succeed elsewhere."""
    return kind in PATH_KINDS


class Unusable(Exception):
    """A file that can never be classified as it stands; ``kind`` says why, ``str()`` says it
    in words."""

    def __init__(self, kind: FailureKind, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind

    @property
    def reason(self) -> str:
        return str(self)
