"""What the roles do with the bucket: list it, hash an object as it streams, read one with
its size checked first, copy one server-side. Every call retries a slow or unreachable store
with capped backoff (botocore's standard mode, :data:`ATTEMPTS` tries), then fails in words.

A client is made in the process that uses it, on first use (a boto3 client is not safe to
share across a fork: Celery's prefork children each make their own)."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from contract.bucket import BucketLocation
from contract.failures import FailureKind, Unusable

log = logging.getLogger(__name__)

#: Tries per call, with exponential backoff between them (botocore caps each wait at 20 s).
ATTEMPTS = 8
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
CHUNK = 1 << 20  # bytes per read while hashing a streamed object
PAGE = 1000  # keys per ListObjectsV2 call (S3's maximum)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    modified_ns: int  # LastModified, as the ledger's mtime_ns


def _listed(entry: dict[str, Any]) -> ObjectInfo:
    """One ListObjectsV2 entry."""
    return ObjectInfo(
        key=entry["Key"],
        size=int(entry["Size"]),
        etag=str(entry.get("ETag", "")).strip('"'),
        modified_ns=int(entry["LastModified"].timestamp() * 1e9),
    )


class StoreUnavailable(ConnectionError):
    """The store did not answer after the retries: try again later."""


def _client(endpoint_url: str | None, attempts: int = ATTEMPTS) -> Any:
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    session = boto3.session.Session()
    config = Config(
        retries={"mode": "standard", "max_attempts": attempts},
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        max_pool_connections=32,
    )
    if session.get_credentials() is None:
        # No credentials anywhere in the chain (environment, ~/.aws, instance role): a local
        # store without access control (SeaweedFS, MinIO in dev) takes anonymous requests.
        log.info("no AWS credentials found: sending anonymous requests")
        config = config.merge(Config(signature_version=UNSIGNED))
    return session.client("s3", endpoint_url=endpoint_url or None, config=config)


class ObjectStore:
    """The inbox bucket, for one process (thread-safe: boto3 clients are)."""

    def __init__(self, location: BucketLocation, endpoint_url: str | None) -> None:
        self.location = location
        self._endpoint = endpoint_url
        self._lock = threading.Lock()
        self._made: tuple[int, Any] | None = None  # (pid, client)

    @property
    def client(self) -> Any:
        with self._lock:
            if self._made is None or self._made[0] != os.getpid():
                self._made = (os.getpid(), _client(self._endpoint))
            return self._made[1]

    # --- listing ---------------------------------------------------------------------------------

    def listing(self, start_after: str = "") -> Iterator[ObjectInfo]:
        """The inbox's objects in key order, after ``start_after`` ("" from the start): the
        keys :meth:`BucketLocation.in_inbox` takes."""
        for info in self.listing_under(self.location.prefix, start_after):
            if self.location.in_inbox(info.key):
                yield info

    def listing_under(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order, after ``start_after``."""
        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Prefix": prefix, "MaxKeys": PAGE}
        if start_after:
            kwargs["StartAfter"] = start_after
        while True:
            page = self._call("list", prefix or "/", self.client.list_objects_v2, **kwargs)
            for entry in page.get("Contents", ()):
                key = entry["Key"]
                if key.endswith("/"):
                    continue  # a folder marker
                yield _listed(entry)
            if not page.get("IsTruncated"):
                return
            kwargs.pop("StartAfter", None)
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def listed(self, key: str) -> ObjectInfo | None:
        """The inbox's object at exactly ``key`` as a listing shows it (one request: a key
        sorts before every longer key it begins), or None: gone, or not the inbox's."""
        if not self.location.in_inbox(key):
            return None
        kwargs = {"Bucket": self._bucket, "Prefix": key, "MaxKeys": 1}
        page = self._call("list", key, self.client.list_objects_v2, **kwargs)
        for entry in page.get("Contents", ()):
            if entry["Key"] == key:
                return _listed(entry)
        return None

    def probe(self) -> None:
        """One short listing: the bucket exists and answers these credentials. Raises
        :class:`StoreUnavailable` or :class:`Unusable` (refused), in words."""
        self._call(
            "list",
            self.location.prefix or "/",
            self._quick_client().list_objects_v2,
            Bucket=self._bucket,
            Prefix=self.location.prefix,
            MaxKeys=1,
        )

    def _quick_client(self) -> Any:
        """A client that tries twice: a check at start must answer in seconds."""
        return _client(self._endpoint, attempts=2)

    # --- reading ---------------------------------------------------------------------------------

    def hash_object(self, key: str) -> tuple[str, int, str]:
        """(sha256, size, etag) of the object's bytes, read as a stream (any size)."""
        answer = self._get(key)
        digest, size = hashlib.sha256(), 0
        body = answer["Body"]
        try:
            for chunk in iter(lambda: body.read(CHUNK), b""):
                digest.update(chunk)
                size += len(chunk)
        except Exception as exc:
            raise StoreUnavailable(f"reading {key!r} broke off: {exc}") from exc
        finally:
            body.close()
        return digest.hexdigest(), size, str(answer.get("ETag", "")).strip('"')

    def read_bounded(self, key: str, max_bytes: int) -> bytes:
        """The object's bytes if it has at most ``max_bytes``: the size the GET's headers give
        is checked before the body is read (one request, not a HEAD and a GET), and the body
        is read to at most one byte more. Raises :class:`Unusable`: ``vanished`` (no such
        object), ``unreadable`` (refused, or the store unreachable after the retries),
        ``too_large``, ``changed`` (it grew under the read)."""
        try:
            answer = self._get(key)
            body = answer["Body"]
            try:
                size = int(answer.get("ContentLength", 0))
                if size > max_bytes:
                    raise Unusable(
                        FailureKind.TOO_LARGE,
                        f"object is {size / (1 << 20):,.1f} MiB, over the "
                        f"{max_bytes / (1 << 20):,.1f} MiB limit (MAX_FILE_BYTES)",
                    )
                data = body.read(max_bytes + 1)
            except Unusable:
                raise
            except Exception as exc:
                raise StoreUnavailable(f"reading {key!r} broke off: {exc}") from exc
            finally:
                body.close()
        except StoreUnavailable as exc:
            raise Unusable(FailureKind.UNREADABLE, str(exc)) from None
        if len(data) > max_bytes:
            raise Unusable(FailureKind.CHANGED, "object grew while it was read")
        return data

    def _get(self, key: str) -> Any:
        return self._call("get", key, self.client.get_object, Bucket=self._bucket, Key=key)

    # --- writing ---------------------------------------------------------------------------------

    def copy(self, source_key: str, key: str) -> None:
        """A server-side copy (the bytes do not travel through this process)."""
        self._call(
            "copy",
            source_key,
            self.client.copy_object,
            Bucket=self._bucket,
            Key=key,
            CopySource={"Bucket": self._bucket, "Key": source_key},
        )

    def put(self, key: str, data: bytes) -> None:
        self._call("put", key, self.client.put_object, Bucket=self._bucket, Key=key, Body=data)

    def delete(self, key: str) -> None:
        self._call("delete", key, self.client.delete_object, Bucket=self._bucket, Key=key)

    # --- errors ----------------------------------------------------------------------------------

    @property
    def _bucket(self) -> str:
        return self.location.bucket

    def _call(self, what: str, key: str, method: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return method(**kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            where = f"s3://{self._bucket}/{key}"
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                raise Unusable(FailureKind.VANISHED, f"object {where} is gone") from None
            if code == "NoSuchBucket":
                raise StoreUnavailable(f"bucket {self._bucket!r} does not exist") from None
            if code in ("AccessDenied", "403", "Forbidden") or status == 403:
                raise Unusable(
                    FailureKind.UNREADABLE,
                    f"the store refused to {what} {where} (access denied: check the "
                    "credentials and the bucket's policy)",
                ) from None
            raise StoreUnavailable(
                f"{what} {where}: {code or status}: {error.get('Message')}"
            ) from None
        except BotoCoreError as exc:
            raise StoreUnavailable(
                f"the object store did not answer after {ATTEMPTS} tries ({exc})"
            ) from None
