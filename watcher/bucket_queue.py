"""Bucket notifications from a queue (``BUCKET_EVENTS_QUEUE_URL``): AWS S3 sends its event
notifications to SQS (directly, or through SNS), not to an HTTP endpoint, so the watcher of a
bucket inbox long-polls that queue on a thread of its own and hands the keys it names to the
loop (:class:`watcher.notified.NotifiedKeys`), as the webhook endpoint does.

A message is deleted once its keys are handed over, or once it is found to be no notification
(a warning says so: it would come back forever otherwise). One lost between the two (the watcher
killed) costs nothing: the listings find its keys.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from contract.backoff import Backoff
from contract.settings import Settings
from objectstore.notifications import NotANotification, written_keys

if TYPE_CHECKING:
    from watcher.notified import NotifiedKeys

log = logging.getLogger("watcher.service")

WAIT_S = 10  # one long poll; also how long a stop may wait for it
BATCH = 10  # SQS's most messages per receive


def queue_client(queue_url: str) -> Any:
    """An SQS client for ``queue_url``: its endpoint is the URL's host (AWS's
    ``sqs.<region>.amazonaws.com``, or any SQS-compatible server), its region the one the host
    names, else ``AWS_DEFAULT_REGION``; credentials from the AWS chain."""
    import boto3
    from botocore.config import Config

    parts = urlsplit(queue_url)
    named = re.match(r"^sqs\.([a-z0-9-]+)\.amazonaws\.com", parts.netloc)
    region = named.group(1) if named else os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    return boto3.session.Session().client(
        "sqs",
        endpoint_url=f"{parts.scheme}://{parts.netloc}",
        region_name=region,
        config=Config(
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=5,
            read_timeout=WAIT_S + 10,
        ),
    )


class QueueReader:
    """Reads the queue on a thread of its own until ``stop`` is set."""

    def __init__(
        self, settings: Settings, bucket: str, keys: NotifiedKeys, stop: threading.Event
    ) -> None:
        assert settings.bucket_events_queue_url is not None
        self.url = settings.bucket_events_queue_url
        self.bucket = bucket
        self.keys = keys
        self.client = queue_client(self.url)
        self._stop = stop
        self._backoff = Backoff(base=1.0, cap=60.0)

    def start(self) -> None:
        threading.Thread(target=self.run, name="watcher-queue", daemon=True).start()
        log.info("taking bucket notifications from %s", self.url)

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.take_one_poll()
                self._backoff.succeeded()
            except Exception as exc:  # the queue away or refused: the listings go on
                delay = self._backoff.failed()
                log.warning("reading %s failed (%s); next try in %.1fs", self.url, exc, delay)
                self._stop.wait(delay)

    def take_one_poll(self) -> None:
        """One long poll: hand over the keys its messages name, then delete them."""
        answer = self.client.receive_message(
            QueueUrl=self.url, MaxNumberOfMessages=BATCH, WaitTimeSeconds=WAIT_S
        )
        messages = answer.get("Messages", [])
        for message in messages:
            try:
                self.keys.add(written_keys(message["Body"].encode(), self.bucket))
            except NotANotification as exc:
                log.warning(
                    "a message in %s is no bucket notification (%s): dropped", self.url, exc
                )
        if messages:
            self.client.delete_message_batch(
                QueueUrl=self.url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)
                ],
            )
