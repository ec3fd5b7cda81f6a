"""Reading files from the inbox, which untrusted users write to: a FIFO or a device swapped in
for a file must neither block the reader nor be read, a huge file is refused before it is read,
and bytes are used only if they still have the hash they were queued with. The workers, the web
app and labeling all read through here."""

from __future__ import annotations

import functools
import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from contract.failures import FailureKind, Unusable
from contract.paths import from_ledger
from contract.stamps import FileStamp


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


def read_bounded(path: str, max_bytes: int) -> bytes:
    """The bytes of the regular file at ``path`` (a file-system path), if it is at most
    ``max_bytes`` long. The size is checked before anything is read, so a huge (or sparse)
    file never lands in memory. Raises :class:`Unusable`: a path failure (vanished,
    unreadable, not regular, grew meanwhile) or ``too_large``."""
    return read_stamped(path, max_bytes)[0]


def read_stamped(path: str, max_bytes: int) -> tuple[bytes, FileStamp]:
    """:func:`read_bounded`, with the file's stamp as it was once the bytes were read: if it
    is the stamp the hasher issued, these are the bytes it hashed (:mod:`contract.stamps`)."""
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
        stamp = FileStamp.of(os.fstat(fd))  # after the read: a write meanwhile moves ctime
    except OSError as exc:
        raise Unusable(
            FailureKind.UNREADABLE, f"file cannot be read: {exc.strerror or exc}"
        ) from None
    finally:
        os.close(fd)
    return data, stamp


def verify(data: bytes, sha256: str) -> None:
    """Raises :class:`Unusable` (``changed``) unless ``data`` has content hash ``sha256``."""
    if hashlib.sha256(data).hexdigest() != sha256:
        raise Unusable(
            FailureKind.CHANGED, "file changed after it was queued (content hash differs)"
        )


def read_verified(path: str, sha256: str, max_bytes: int) -> bytes:
    """:func:`read_bounded`, then :func:`verify`: the bytes only if they still have the
    content hash they were queued with."""
    data = read_bounded(path, max_bytes)
    verify(data, sha256)
    return data


def _mib(size: int) -> str:
    return f"{size / (1 << 20):,.1f} MiB"


class FileGone(LookupError):
    """No path of the image holds its bytes any more (moved, deleted or changed)."""


class FileRefused(ValueError):
    """The image's file is there but is not read: larger than ``MAX_FILE_BYTES``."""


@dataclass(frozen=True, slots=True)
class InboxFile:
    path: str  # as the ledger has it
    data: bytes


def inside(path: str, root_real: str) -> bool:
    """Whether ``path``, symlinks resolved, lies in the folder ``root_real`` (resolved)."""
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def read_from_inbox(inbox: str, paths: Sequence[str], sha256: str, max_bytes: int) -> InboxFile:
    """An image's bytes by content hash, for the web app and labeling: the first of ``paths``
    (ledger paths, most recently seen first) that resolves inside the inbox (whatever the
    symlinks), is a regular file of at most ``max_bytes`` and still has content ``sha256``.
    Raises :class:`FileRefused` when the file is there but too large, else :class:`FileGone`."""
    root = os.path.realpath(inbox)
    readers = []
    for path in paths:
        real = os.path.realpath(from_ledger(path))
        if inside(real, root):
            readers.append((path, functools.partial(read_bounded, real, max_bytes)))
    return first_with_content(
        readers,
        sha256,
        gone="the image's file is no longer in the inbox with this content (moved, deleted or "
        "changed since it was classified)",
    )


def first_with_content(
    readers: Iterable[tuple[str, Callable[[], bytes]]], sha256: str, gone: str
) -> InboxFile:
    """The first of ``readers`` (a ledger path and how to read it, bounded) whose bytes have
    content ``sha256``. Raises :class:`FileRefused` when one was there but too large, else
    :class:`FileGone` saying ``gone``."""
    refused: Unusable | None = None
    for path, read in readers:
        try:
            data = read()
            verify(data, sha256)
            return InboxFile(path, data)
        except Unusable as exc:
            if exc.kind is FailureKind.TOO_LARGE:
                refused = exc
    if refused is not None:
        raise FileRefused(refused.reason)
    raise FileGone(gone)
