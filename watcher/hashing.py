"""Content hashing: the ledger's key. Streams the file in 1 MiB chunks; never holds it whole."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence

from contract import stamps
from contract.failures import Unusable
from contract.files import open_regular
from contract.records import SeenFile
from imaging.trailers import HEAD_BYTES, TAIL_BYTES, looks_unfinished
from watcher.filters import Scope, Signature, Skip, inspect

CHUNK = 1 << 20


class NotHashable(Exception):
    """The file vanished, cannot be read, or is not a regular file (any more)."""


class ChangedWhileReading(NotHashable):
    """Size or mtime moved while it was hashed: it is not complete yet."""


def hash_file(path: str) -> SeenFile:
    """sha256, size and mtime_ns of the regular file at ``path``, and whether its format says
    it is unfinished (judged on its first and last bytes, kept as they stream by)."""
    try:
        fd = open_regular(path)
    except Unusable as exc:
        raise NotHashable(exc.reason) from None
    try:
        before = os.fstat(fd)
        read_from = stamps.kernel_clock_now()
        digest = hashlib.sha256()
        # Sized to the file (a byte more, to see the end in one read): a fresh 1 MiB buffer
        # per small file cost as much as hashing it.
        buffer = bytearray(min(CHUNK, before.st_size + 1))
        view = memoryview(buffer)
        size = 0
        head = tail = b""
        while n := os.readv(fd, [buffer]):
            digest.update(view[:n])
            if size < HEAD_BYTES:
                head += bytes(view[: HEAD_BYTES - size])
            tail = (tail + bytes(view[max(0, n - TAIL_BYTES) : n]))[-TAIL_BYTES:]
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
    return SeenFile(
        path=path,
        sha256=digest.hexdigest(),
        size=size,
        mtime_ns=after.st_mtime_ns,
        unfinished=looks_unfinished(head, tail, size),
        stamp=stamps.issue(before, after, read_from),
    )


#: What :func:`hash_many` says of a path whose size and mtime the ledger already has.
UNCHANGED = "unchanged"


def hash_many(
    paths: Sequence[str],
    scope: Scope,
    known: Mapping[str, tuple[int, int]],
) -> list[tuple[str, SeenFile | NotHashable | Skip | str]]:
    """For a worker process (``HASH_PROCESSES``): each path inspected (the same rules as the
    watcher's own thread: hidden, temporary, symlinks out, not regular) and, unless the ledger
    already has it with this size and mtime (``known``: :data:`UNCHANGED`), hashed. Moves the
    per-file system calls and hashing off the watcher's process, whose Python work caps it
    at a few thousand files a second on threads."""
    out: list[tuple[str, SeenFile | NotHashable | Skip | str]] = []
    for path in paths:
        found = inspect(path, scope)
        if isinstance(found, Skip):
            out.append((path, found))
        elif known.get(path) == tuple(found):
            out.append((path, UNCHANGED))
        else:
            try:
                out.append((path, hash_file(path)))
            except NotHashable as exc:
                out.append((path, exc))
    return out


def inspect_many(paths: Sequence[str], scope: Scope) -> list[tuple[str, Signature | Skip]]:
    """For a worker process (``HASH_PROCESSES``): what :func:`watcher.filters.inspect` finds at
    each path, for a rescan."""
    return [(path, inspect(path, scope)) for path in paths]
