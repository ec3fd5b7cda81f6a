"""Reading an image's bytes from the inbox, by content hash only: the path comes from the
ledger, must resolve inside the inbox (whatever the symlinks), must be a regular file, and
must still hold the bytes of that hash."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from contract.failures import FailureKind, Unusable
from contract.files import read_verified
from contract.paths import from_ledger


class FileGone(LookupError):
    """No path of the image holds its bytes any more (moved, deleted or changed)."""


class FileRefused(ValueError):
    """The image's file is there but is not read: larger than ``MAX_FILE_BYTES``."""


@dataclass(frozen=True, slots=True)
class InboxFile:
    path: str  # as the ledger has it
    data: bytes


def inside(path: str, root_real: str) -> bool:
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def read_from_inbox(inbox: str, paths: Sequence[str], sha256: str, max_bytes: int) -> InboxFile:
    """The bytes of the first of ``paths`` (ledger paths, most recently seen first) that is
    inside the inbox, at most ``max_bytes`` long and still has content ``sha256``. Raises
    :class:`FileRefused` when the file is there but too large, else :class:`FileGone`."""
    root = os.path.realpath(inbox)
    refused: Unusable | None = None
    for path in paths:
        real = os.path.realpath(from_ledger(path))
        if not inside(real, root):
            continue
        try:
            return InboxFile(path, read_verified(real, sha256, max_bytes))
        except Unusable as exc:
            if exc.kind is FailureKind.TOO_LARGE:
                refused = exc
            continue
    if refused is not None:
        raise FileRefused(refused.reason)
    raise FileGone(
        "the image's file is no longer in the inbox with this content (moved, deleted or "
        "changed since it was classified)"
    )
