"""Reading an image's bytes from the inbox, by content hash only: the path comes from the
ledger, must resolve inside the inbox (whatever the symlinks), must be a regular file, and
must still hold the bytes of that hash."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

from contract.failures import Unusable
from contract.files import open_regular

MAX_ORIGINAL_BYTES = 512 * 1024 * 1024


class FileGone(LookupError):
    """No path of the image holds its bytes any more (moved, deleted or changed)."""


@dataclass(frozen=True, slots=True)
class InboxFile:
    path: str  # as the ledger has it
    data: bytes


def inside(path: str, root_real: str) -> bool:
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def read_from_inbox(inbox: str, paths: Sequence[str], sha256: str) -> InboxFile:
    """The bytes of the first of ``paths`` (most recently seen first) that is inside the inbox
    and still has content ``sha256``. Raises :class:`FileGone`."""
    root = os.path.realpath(inbox)
    for path in paths:
        if not inside(path, root):
            continue
        try:
            fd = open_regular(os.path.realpath(path))
        except Unusable:
            continue
        try:
            if os.fstat(fd).st_size > MAX_ORIGINAL_BYTES:
                continue
            with os.fdopen(fd, "rb", closefd=False) as handle:
                data = handle.read()
        except OSError:
            continue
        finally:
            os.close(fd)
        if hashlib.sha256(data).hexdigest() == sha256:
            return InboxFile(path, data)
    raise FileGone(
        "the image's file is no longer in the inbox with this content (moved, deleted or "
        "changed since it was classified)"
    )
