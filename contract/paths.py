"""Paths as the ledger stores them. A Linux file name is bytes: anything but ``/`` and NUL,
not necessarily UTF-8. Python hands an undecodable name over with lone surrogates
(``surrogateescape``), which neither SQLite nor PostgreSQL can store, nor JSON carry safely.

So the ledger (and every message) holds text: a name that is valid UTF-8 as it is, and any
other as ``bytes:`` followed by the path with each undecodable byte written ``\\xHH`` and each
backslash doubled, e.g. ``bytes:/srv/inbox/bad\\xff\\xfe.jpg``. Recorded paths are absolute, so
no real path starts with ``bytes:``; one that would (a relative path) is escaped as well, and the
mapping is exact both ways. A person sees the escaped form; whoever opens the file calls
:func:`from_ledger` first.
"""

from __future__ import annotations

import os
import re

ESCAPED = "bytes:"
_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


def to_ledger(path: str) -> str:
    """The text the ledger stores for the file-system path ``path``."""
    if not path.startswith(ESCAPED):
        try:
            path.encode("utf-8")
            return path
        except UnicodeEncodeError:
            pass
    raw = os.fsencode(path)
    out: list[str] = []
    for chunk in re.split(rb"(\\)", raw):
        if chunk == b"\\":
            out.append("\\\\")
        else:
            out.append(chunk.decode("utf-8", "backslashreplace"))
    return ESCAPED + "".join(out)


def from_ledger(text: str) -> str:
    """The file-system path (as ``os`` functions take it) for the ledger's ``text``."""
    if not text.startswith(ESCAPED):
        return text
    body = text[len(ESCAPED) :]
    raw = bytearray()
    position = 0
    for match in _ESCAPE.finditer(body):
        raw += body[position : match.start()].encode("utf-8")
        token = match.group(1)
        raw += b"\\" if token == "\\" else bytes([int(token[1:], 16)])
        position = match.end()
    raw += body[position:].encode("utf-8")
    return os.fsdecode(bytes(raw))


def shown(path: str) -> str:
    """``path`` (a file-system path) as it can be printed or logged: the ledger's text."""
    return to_ledger(path)
