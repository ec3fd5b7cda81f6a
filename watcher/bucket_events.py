"""Bucket notifications for the watcher of a bucket inbox (``BUCKET_EVENTS_LISTEN``): a small
HTTP endpoint where the store POSTs what was written (SeaweedFS's filer webhook, MinIO's
webhook target; :mod:`objectstore.notifications` reads both), so a new object is found within
a request or two instead of at the next listing.

A notification is a hint, never the record: the keys wait in
:class:`watcher.notified.NotifiedKeys` until the
watcher's loop lists and reads them like any listed object. Notifications are at least once
and can be late or lost, so the listings go on regardless; a duplicate costs one request.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from contract.settings import Settings
from objectstore.notifications import NotANotification, written_keys

if TYPE_CHECKING:
    from watcher.notified import NotifiedKeys

log = logging.getLogger("watcher.service")

MAX_BODY = 1 << 20  # one notification is a few KiB; a bigger body is not one
DRAIN_LIMIT = 16 * MAX_BODY  # a refused body read and dropped, so the sender gets the 413


class NotificationReceiver:
    """The endpoint, on its own threads, while the watcher runs: ``start`` / ``stop``."""

    def __init__(self, settings: Settings, bucket: str, keys: NotifiedKeys) -> None:
        address = settings.bucket_events_address
        assert address is not None
        token = settings.bucket_events_token
        self.address = address
        self._server = ThreadingHTTPServer(  # binds now: a taken port fails at start
            self.address, _handler(bucket, keys, token.get_secret_value() if token else None)
        )
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="watcher-notifications", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("taking bucket notifications on %s:%d", self.address[0], self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _carries(authorization: str, token: str) -> bool:
    """``Bearer <token>``, or the bare token (some MinIO releases send it without a scheme)."""
    given = authorization.removeprefix("Bearer ").strip().encode()
    return hmac.compare_digest(given, token.encode())


def _handler(bucket: str, keys: NotifiedKeys, token: str | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "inbox-classifier-watcher"

        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self._answer(411, {"error": "Content-Length is required"})
                return
            # The body is read (or, too large, drained) before any answer: a sender still
            # writing it would see a broken pipe instead of the status.
            if length > MAX_BODY:
                self._drain(length)
                self._answer(413, {"error": f"a notification is at most {MAX_BODY} bytes"})
                return
            body = self.rfile.read(length)
            if token is not None and not _carries(self.headers.get("Authorization", ""), token):
                self._answer(401, {"error": "a bearer token is required (BUCKET_EVENTS_TOKEN)"})
                return
            try:
                found = written_keys(body, bucket)
            except NotANotification as exc:
                self._answer(400, {"error": str(exc)})
                return
            if found:
                keys.add(found)
            self._answer(200, {"keys": len(found)})

        def _drain(self, length: int) -> None:
            """Read and drop a refused body, up to DRAIN_LIMIT (beyond, the sender sees the
            connection close)."""
            left = min(length, DRAIN_LIMIT)
            while left > 0 and (chunk := self.rfile.read(min(left, 1 << 16))):
                left -= len(chunk)

        def do_GET(self) -> None:  # a store's reachability check, a person's look
            self._answer(200, {"bucket": bucket, "post": "S3 event records or SeaweedFS events"})

        def do_HEAD(self) -> None:
            self.send_response(200)
            self.end_headers()

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            if status >= 400:
                log.warning("bucket notification refused (%d): %s", status, body["error"])

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("notification endpoint: " + format, *args)

    return Handler
