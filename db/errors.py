"""Which database errors are worth retrying: the server is locked, restarting or unreachable,
not the statement wrong."""

from __future__ import annotations

import sqlalchemy.exc

#: What SQLite says when its file cannot be written for a moment: the connection that saw it
#: is thrown away (SQLite may have fallen back to a read-only open, which it keeps for good),
#: so the next one finds the file as it is now.
STALE_CONNECTION = (
    "readonly database",
    "disk i/o error",
    "unable to open database file",
    "database or disk is full",
    "database disk image is malformed",
)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,  # SQLite "database is locked", a server going away
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,  # the connection pool is exhausted
    ConnectionError,
)


#: Every error the ledger's functions can raise (what a caller maps to "unavailable" when
#: :func:`unavailable_reason` says so).
DATABASE_ERRORS: tuple[type[Exception], ...] = (sqlalchemy.exc.SQLAlchemyError, ConnectionError)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, TRANSIENT_ERRORS)


def is_stale_connection(exc: BaseException) -> bool:
    """Whether the connection that raised ``exc`` should be replaced (see STALE_CONNECTION)."""
    text = str(exc).lower()
    return any(marker in text for marker in STALE_CONNECTION)


def unavailable_reason(exc: BaseException) -> str | None:
    """Why the database refuses, in a line a person can act on; None when ``exc`` is not a
    transient database error (a bug or a bad statement)."""
    if not is_transient(exc):
        return None
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip().splitlines()[0] if str(original).strip() else type(original)
    text = str(text)
    lowered = text.lower()
    if "readonly" in lowered or "read-only" in lowered:
        hint = "the ledger's file or folder is read-only: make it writable"
    elif "full" in lowered:
        hint = "the disk is full: free some space"
    elif "locked" in lowered:
        hint = "another process holds the ledger's write lock"
    elif "unable to open" in lowered:
        hint = "the ledger's file cannot be opened (read-only, moved, or no permission)"
    elif "i/o" in lowered:
        hint = "the disk under the ledger reported an I/O error"
    else:
        hint = "the database server is unreachable or restarting"
    return f"the database is unavailable ({hint}: {text}); try again shortly"
