"""Content hashing: the ledger's key. Streams the file; never holds it whole."""

from __future__ import annotations

import hashlib
import os

from db.ledger import SeenFile

CHUNK = 1 << 20


def hash_file(path: str) -> SeenFile | None:
    """sha256 + size + mtime of a regular file, or None if it vanished, cannot be read, or
    changed while it was being read (it is then not complete; it will be seen again)."""
    digest = hashlib.sha256()
    try:
        # O_NONBLOCK: should a FIFO have been swapped in after the lstat, open does not block.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        before = os.fstat(fd)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        after = os.fstat(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        return None
    return SeenFile(
        path=path, sha256=digest.hexdigest(), size=after.st_size, mtime_ns=after.st_mtime_ns
    )
