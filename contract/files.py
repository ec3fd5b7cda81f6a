"""Opening a file from the inbox, which untrusted users write to: a FIFO or a device swapped in
for a file must neither block the reader nor be read."""

from __future__ import annotations

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
