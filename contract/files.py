"""Opening a file from the inbox, which untrusted users write to: a FIFO or a device swapped in
for a file must neither block the reader nor be read."""

from __future__ import annotations

import hashlib
import os
import stat

from contract.failures import FailureKind, Unusable


def open_regular(path: str) -> int:
    """A read-only descriptor of the regular file at ``path`` (the caller closes it). Raises
    :class:`Unusable` (vanished / unreadable / not regular) with a reason in words."""
    try:
        # O_NONBLOCK: opening a FIFO does not wait for a writer; the fstat below refuses it
        # before anything is read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Unusable(FailureKind.VANISHED, "file vanished before it could be read") from None
    except OSError as exc:
        raise Unusable(
            FailureKind.UNREADABLE, f"file cannot be opened: {exc.strerror or exc}"
        ) from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        os.close(fd)
        raise Unusable(
            FailureKind.UNREADABLE, f"file cannot be read: {exc.strerror or exc}"
        ) from None
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise Unusable(FailureKind.NOT_REGULAR, "not a regular file")
    return fd


def read_verified(path: str, sha256: str, max_bytes: int) -> bytes:
    """The bytes of the regular file at ``path`` (a file-system path), if it is at most
    ``max_bytes`` long and still has content ``sha256``. The size is checked before anything
    is read, so a huge (or sparse) file never lands in memory. Raises :class:`Unusable`: a
    path failure (vanished, unreadable, not regular, changed) or ``too_large``."""
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise Unusable(
                FailureKind.TOO_LARGE,
                f"file is {_mib(size)}, over the {_mib(max_bytes)} limit (MAX_FILE_BYTES)",
            )
        # Up to the size fstat gave, plus a byte: a file growing meanwhile is refused. A
        # regular file normally gives it all in the first read.
        data = os.read(fd, size + 1)
        while len(data) <= size and (more := os.read(fd, size + 1 - len(data))):
            data += more
        if len(data) > size:
            raise Unusable(FailureKind.CHANGED, "file grew while it was read")
    except OSError as exc:
        raise Unusable(
            FailureKind.UNREADABLE, f"file cannot be read: {exc.strerror or exc}"
        ) from None
    finally:
        os.close(fd)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise Unusable(
            FailureKind.CHANGED, "file changed after it was queued (content hash differs)"
        )
    return data


def _mib(size: int) -> str:
    return f"{size / (1 << 20):,.1f} MiB"
