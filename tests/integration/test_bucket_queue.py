"""Bucket notifications through a queue, the way AWS S3 sends them (S3 → SQS, S3 → SNS → SQS):
the watcher long-polls the queue and takes the keys its messages name at once, between
listings 30 s apart; a message that is no notification is dropped with a warning, not read
forever.

No AWS here: the queue is moto's SQS server (an SQS-compatible server, as ElasticMQ is), and the
test sends the messages S3 would send (their bodies as AWS documents them) for objects it writes
into a real S3 server (SeaweedFS).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote_plus

import pytest

from contract.settings import Settings
from inbox_classifier.redis_server import free_port
from tests.helpers.images import random_image
from tests.helpers.object_store import SeaweedServer
from tests.helpers.pipeline import count, wait_until
from tests.helpers.procs import finished, running

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def sqs_endpoint(tmp_path: Path) -> Iterator[str]:
    pytest.importorskip("moto.server", reason="moto[server] (the test extra) serves SQS")
    port = free_port()
    log = open(tmp_path / "moto.log", "ab")  # noqa: SIM115 - the server's for its lifetime
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((tmp_path / "moto.log").read_text()[-2000:]) from None
                time.sleep(0.2)
        yield endpoint
    finally:
        server.terminate()
        server.wait(10)
        log.close()


def _jpeg(seed: int) -> bytes:
    import io

    buffer = io.BytesIO()
    random_image(seed).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _s3_event(bucket: str, key: str) -> str:
    """A message body as S3 sends it to SQS (keys URL-encoded, spaces as '+')."""
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": {"key": quote_plus(key), "size": 1}},
    }
    return json.dumps({"Records": [record]})


def test_keys_named_in_the_queue_are_found_at_once_between_listings(
    settings: Settings,
    session_factory,
    tmp_path: Path,
    sqs_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = SeaweedServer(tmp_path / "weed")
    store.start()
    try:
        for name, value in store.environment().items():
            monkeypatch.setenv(name, value)
        s3 = store.client()
        s3.create_bucket(Bucket="queued")
        from watcher.bucket_queue import queue_client

        url = queue_client(sqs_endpoint + "/123456789012/q").create_queue(QueueName="inbox")[
            "QueueUrl"
        ]
        sqs = queue_client(url)
        s = settings.model_copy(
            update={
                "inbox_bucket": "s3://queued/drop/",
                "bucket_list_interval_s": 30.0,
                "bucket_events_queue_url": url,
            }
        )
        s3.put_object(Bucket="queued", Key="drop/m-first.jpg", Body=_jpeg(1))
        log = tmp_path / "watch.log"
        with running(s, "watch", log=log):
            wait_until(lambda: count(session_factory) == 1, 60, "the first listing\n" + log.name)
            time.sleep(1.0)  # the start-up pass is over: the next listing is 30 s away
            sqs.send_message(QueueUrl=url, MessageBody="not a notification")
            sqs.send_message(
                QueueUrl=url,
                MessageBody=json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}),
            )
            latencies = []
            keys = ["drop/a b/first.jpg", "drop/z-second.jpg", "drop/c-third.jpg"]
            for i, key in enumerate(keys):
                before = count(session_factory)
                written = time.monotonic()
                s3.put_object(Bucket="queued", Key=key, Body=_jpeg(10 + i))
                body = _s3_event("queued", key)
                if i == 1:  # S3 → SNS → SQS: the record inside SNS's envelope
                    body = json.dumps({"Type": "Notification", "Message": body})
                sqs.send_message(QueueUrl=url, MessageBody=body)
                wait_until(
                    lambda b=before: count(session_factory) > b,
                    10,
                    f"{key} from the queue\n{log.read_text()[-3000:]}",
                )
                latencies.append(time.monotonic() - written)
            left = sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
            )["Attributes"]["ApproximateNumberOfMessages"]
        text = log.read_text()
        assert "taking bucket notifications from" in text
        assert "is no bucket notification" in text  # the bad message: said, and dropped
        assert left == "0"
        latencies.sort()
        print(f"\n[measured] queued notification -> row: p50 {latencies[1]:.2f} s, "
              f"max {latencies[-1]:.2f} s (listing every 30 s)")  # fmt: skip
        assert latencies[1] <= 1.0 and latencies[-1] < 5.0
    finally:
        store.stop()


def test_a_queue_that_cannot_be_read_stops_the_watcher_with_a_reason(
    bucket_settings: Settings, sqs_endpoint: str
) -> None:
    missing = bucket_settings.model_copy(
        update={"bucket_events_queue_url": sqs_endpoint + "/123456789012/no-such-queue"}
    )
    done = finished(missing, "watch")
    assert done.returncode == 2, done.stderr
    assert "BUCKET_EVENTS_QUEUE_URL" in done.stderr and "no-such-queue" in done.stderr
