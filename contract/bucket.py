"""``s3://bucket/prefix`` as the inbox: parsing it, and the ledger's name for an object.

An object's ledger path is its URL, ``s3://bucket/key``. S3 keys are UTF-8 text, so they need
none of :mod:`contract.paths`'s escaping, and no key is ever joined to a file-system path (a
key holding ``../`` names an object, not a folder), so nothing a user writes as a key can
reach outside the bucket. Keys that differ only by case or Unicode normalisation are
different objects, and stay different paths."""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "s3://"
#: S3's rule for bucket names (3-63 lowercase letters, digits, dots and hyphens).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
#: Where corrections are copied to in the inbox's bucket; never listed as inbox images.
LABELED_PREFIX = "labeled/"


def is_object_url(path: str) -> bool:
    return path.startswith(SCHEME)


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` → (bucket, key). Raises ValueError, in words."""
    if not is_object_url(url):
        raise ValueError(f"{url!r} is not an s3:// URL")
    bucket, _, key = url[len(SCHEME) :].partition("/")
    return bucket, key


@dataclass(frozen=True, slots=True)
class BucketLocation:
    bucket: str
    prefix: str  # "" (the whole bucket) or a key prefix ending with "/"

    @classmethod
    def parse(cls, url: str) -> BucketLocation:
        """The inbox at ``url``; ValueError saying what is wrong, for the settings' message."""
        bucket, key = split_url(url.strip())
        if not _BUCKET.match(bucket) or ".." in bucket:
            raise ValueError(
                f"{bucket!r} is not a bucket name (3-63 lowercase letters, digits, dots and "
                "hyphens): write s3://bucket or s3://bucket/prefix"
            )
        prefix = key.strip("/")
        if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
            raise ValueError(f"the prefix {key!r} has an empty, '.' or '..' part")
        if prefix == LABELED_PREFIX.rstrip("/") or (prefix + "/").startswith(LABELED_PREFIX):
            raise ValueError(
                f"the inbox cannot be under {LABELED_PREFIX} of its bucket: corrections go there"
            )
        return cls(bucket, prefix + "/" if prefix else "")

    @property
    def url(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}"

    def url_of(self, key: str) -> str:
        """The ledger's path for the object ``key``."""
        return f"{SCHEME}{self.bucket}/{key}"

    def key_of(self, url: str) -> str | None:
        """The key of a ledger path in this bucket; None for a file path or another bucket."""
        if not is_object_url(url):
            return None
        bucket, key = split_url(url)
        return key if bucket == self.bucket and key else None

    def in_inbox(self, key: str) -> bool:
        """An inbox image's key: under the prefix, not a folder marker, not a labeled copy,
        not hidden (a part starting with '.', as sync tools stage their uploads; '.' and '..'
        are only characters in a key)."""
        if not key.startswith(self.prefix) or key.endswith("/"):
            return False
        if key.startswith(LABELED_PREFIX):
            return False
        parts = key[len(self.prefix) :].split("/")
        return not any(part.startswith(".") and part not in (".", "..") for part in parts)
