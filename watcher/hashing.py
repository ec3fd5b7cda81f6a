"""Content hashing: the ledger's key. Streams the file in 1 MiB chunks; never holds it whole."""

from __future__ import annotations

import hashlib
import os

from contract.failures import Unusable
from contract.files import open_regular
from contract.records import SeenFile

CHUNK = 1 << 20


class NotHashable(Exception):
    """The file vanished, cannot be read, or is not a regular file (any more)."""


class ChangedWhileReading(NotHashable):
    """Size or mtime moved while it was hashed: it is not complete yet."""


def hash_file(path: str) -> SeenFile:
    """sha256, size and mtime_ns of the regular file at ``path``."""
    try:
        fd = open_regular(path)
    except Unusable as exc:
        raise NotHashable(exc.reason) from None
    try:
        before = os.fstat(fd)
        digest = hashlib.sha256()
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        size = 0
        while n := os.readv(fd, [buffer]):
            digest.update(view[:n])
            size += n
        after = os.fstat(fd)
    except OSError as exc:
        raise NotHashable(exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or (
        size != after.st_size
    ):
        raise ChangedWhileReading("changed while it was read")
    return SeenFile(path=path, sha256=digest.hexdigest(), size=size, mtime_ns=after.st_mtime_ns)
