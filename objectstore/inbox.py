"""An image's bytes wherever the ledger says it is: a file in the inbox folder, or an object in
the inbox's bucket. The web app, labeling and the near-duplicate pass read through here; the
classify worker reads through :func:`read_item`."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from contract.bucket import BucketLocation, is_object_url
from contract.failures import FailureKind, Unusable
from contract.files import InboxFile, first_with_content, read_from_inbox, read_stamped
from contract.paths import from_ledger
from contract.settings import Settings
from contract.stamps import FileStamp
from objectstore.store import ObjectStore


@functools.lru_cache(maxsize=8)
def _store(url: str, endpoint: str | None) -> ObjectStore:
    return ObjectStore(BucketLocation.parse(url), endpoint)


def store_for(settings: Settings) -> ObjectStore | None:
    """The inbox's bucket for this process (one client per process), or None (a folder)."""
    if settings.inbox_bucket is None:
        return None
    return _store(settings.inbox_bucket, settings.s3_endpoint_url)


def read_item(settings: Settings, path: str) -> bytes:
    """The bytes at a ledger path, at most ``file_byte_limit`` of them (the size checked
    first: ``fstat`` for a file, HEAD for an object). Raises :class:`Unusable`."""
    return read_item_stamped(settings, path)[0]


def read_item_stamped(settings: Settings, path: str) -> tuple[bytes, FileStamp | None]:
    """:func:`read_item`, with a file's stamp as it was once read (None for an object)."""
    if not is_object_url(path):
        return read_stamped(from_ledger(path), settings.file_byte_limit)
    store = store_for(settings)
    key = store.location.key_of(path) if store is not None else None
    if store is None or key is None:
        raise Unusable(
            FailureKind.UNREADABLE,
            f"{path} is not in this inbox's bucket ({settings.inbox_shown}): set INBOX to it",
        )
    return store.read_bounded(key, settings.file_byte_limit), None


def read_image(settings: Settings, paths: Sequence[str], sha256: str) -> InboxFile:
    """:func:`contract.files.read_from_inbox` for folder and bucket alike: the first of
    ``paths`` that still holds content ``sha256``. Raises FileRefused or FileGone."""
    if settings.inbox_bucket is None:
        return read_from_inbox(str(settings.inbox), paths, sha256, settings.file_byte_limit)
    readers = [
        (path, functools.partial(read_item, settings, path))
        for path in paths
        if is_object_url(path)
    ]
    return first_with_content(
        readers,
        sha256,
        gone="the image's object is no longer in the bucket with this content (deleted or "
        "overwritten since it was classified, or the store is unreachable)",
    )
