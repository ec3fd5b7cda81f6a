"""Fault injection on the real stack: `inbox-classifier worker` and `beat` as real processes, a
real redis-server, a real SQLite (or PostgreSQL) ledger, real image files, resnet18 on the CPU.

Each test breaks one thing for real (kill -9, Redis restarted or flushed, the database locked or
restarted, the disk full) and then checks the ledger's promises: every image ends done (or
failed with a reason), none is classified twice by one model version, and nothing stays queued
longer than the documented bound

    requeue_after_s + reconcile_interval_s + processing (the backlog ahead of it, a worker start).

Measured figures are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import os
import re
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from broker import heartbeat
from contract.settings import Settings
from db.engine import make_engine, make_sessionmaker, transaction
from db.models import Image, ImageStatus
from inbox_classifier.redis_server import RedisServer
from tests.helpers.faults import (
    ExclusiveSqliteLock,
    assert_exactly_once,
    enqueue,
    max_attempts_seen,
    queue_depth,
    roles,
    sqlite_path,
    start_beat,
    start_role,
    start_worker,
    status_counts,
    unacked_hashes,
    wait_for,
)
from tests.helpers.images import write_images

pytestmark = pytest.mark.timeout(300)

# Small recovery settings so a test sees the reconciler act within seconds.
REQUEUE_AFTER_S = 3.0
RECONCILE_INTERVAL_S = 3.0


def fast_recovery(settings: Settings, **extra: object) -> Settings:
    return settings.model_copy(
        update={
            "requeue_after_s": REQUEUE_AFTER_S,
            "reconcile_interval_s": RECONCILE_INTERVAL_S,
            "files_per_message": 8,
            **extra,
        }
    )


def report(name: str, **figures: float | int | str) -> None:
    text = ", ".join(
        f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
    )
    print(f"\n[measured] {name}: {text}")


def classified_at(sessions, hashes: set[str]) -> list[datetime]:  # type: ignore[no-untyped-def]
    with transaction(sessions) as session:
        rows = session.execute(
            select(Image.classified_at).where(Image.sha256.in_(list(hashes)))
        ).scalars()
        return [r if r.tzinfo else r.replace(tzinfo=UTC) for r in rows if r is not None]


# --- 1. a worker killed mid-batch --------------------------------------------------------------


@pytest.mark.slow
def test_worker_killed_mid_batch_every_image_done_exactly_once_within_bound(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    s = fast_recovery(settings)
    total = 400
    paths = write_images(tmp_path / "inbox-files", total)
    logs = tmp_path / "logs"
    with roles() as started:
        started.append(first := start_worker(s, logs, "worker1"))
        started.append(start_beat(s, logs))
        enqueue(s, session_factory, paths)
        wait_for(lambda: status_counts(session_factory)["done"] >= 60, 120,
                 lambda: "60 done\n" + first.tail())
        first.kill9()
        killed_at = datetime.now(UTC)
        t_kill = time.monotonic()
        in_flight = unacked_hashes(s.redis_url or "")
        counts = status_counts(session_factory)
        assert in_flight, "the kill did not land mid-batch (nothing was in flight)"
        assert counts["queued"] > 0

        started.append(second := start_worker(s, logs, "worker2"))
        t_ready = time.monotonic() - t_kill
        wait_for(lambda: queue_depth(s.redis_url or "") == 0, 120, "the queue drained")
        t_drained = time.monotonic() - t_kill
        bound = t_drained + REQUEUE_AFTER_S + RECONCILE_INTERVAL_S + 10.0
        wait_for(lambda: status_counts(session_factory)["queued"] == 0, bound + 30,
                 lambda: f"all done\n{status_counts(session_factory)}\n{second.tail()}")
        t_all = time.monotonic() - t_kill
        time.sleep(RECONCILE_INTERVAL_S + 1)  # a late duplicate delivery would land now

    assert_exactly_once(session_factory, total)
    recovered = [(t - killed_at).total_seconds() for t in classified_at(session_factory,
                                                                         in_flight)]
    report(
        "kill -9 worker mid-batch",
        images=total,
        done_at_kill=counts["done"],
        in_flight_at_kill=len(in_flight),
        new_worker_ready_s=t_ready,
        queue_drained_s=t_drained,
        in_flight_recovered_s=max(recovered),
        all_done_s=t_all,
        bound_s=bound,
        max_attempts=max_attempts_seen(session_factory),
    )
    assert len(recovered) == len(in_flight)
    assert t_all <= bound, f"recovery took {t_all:.1f}s, over the bound {bound:.1f}s"
    assert max_attempts_seen(session_factory) <= s.max_attempts


@pytest.mark.slow
def test_a_dead_workers_images_are_re_sent_once_its_heartbeat_lapses(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    """What a worker said it held (broker.heartbeat) is re-sent as soon as its heartbeat
    lapses, long before REQUEUE_AFTER_S; the rest of what it had (a message the broker handed
    over in the instant before the kill, not yet taken in) waits for REQUEUE_AFTER_S."""
    requeue_after = 45.0
    s = fast_recovery(settings, requeue_after_s=requeue_after)
    total = 300
    paths = write_images(tmp_path / "inbox-files", total)
    logs = tmp_path / "logs"
    client = redis.Redis.from_url(s.redis_url or "")
    with roles() as started:
        started.append(first := start_worker(s, logs, "worker1"))
        started.append(start_beat(s, logs))
        enqueue(s, session_factory, paths)
        wait_for(lambda: status_counts(session_factory)["done"] >= 40, 120,
                 lambda: "40 done\n" + first.tail())
        first.kill9()
        killed_at = datetime.now(UTC)
        t_kill = time.monotonic()
        said = {
            m.decode()
            for key in client.scan_iter(match=heartbeat.HELD_PREFIX + "*")
            for m in client.smembers(key)
        }
        in_flight = unacked_hashes(s.redis_url or "")
        assert said and in_flight, "the kill did not land mid-batch (nothing was held)"
        started.append(second := start_worker(s, logs, "worker2"))
        fast = heartbeat.TTL_S + RECONCILE_INTERVAL_S + 15.0  # + a worker start, processing
        wait_for(lambda: len(classified_at(session_factory, said)) == len(said), fast,
                 lambda: f"what it said it held\n{status_counts(session_factory)}")
        said_recovered_s = max(
            (t - killed_at).total_seconds() for t in classified_at(session_factory, said)
        )
        bound = requeue_after + RECONCILE_INTERVAL_S + 15.0
        wait_for(lambda: status_counts(session_factory)["queued"] == 0, bound,
                 lambda: f"all done\n{status_counts(session_factory)}\n{second.tail()}")
        t_all = time.monotonic() - t_kill
        time.sleep(RECONCILE_INTERVAL_S + 1)  # a late duplicate delivery would land now
        assert "stopped answering: re-sent" in second.log.read_text(errors="replace")
    client.close()
    assert_exactly_once(session_factory, total)
    report("kill -9, heartbeat lapse", images=total, held_said=len(said),
           unacked_at_kill=len(in_flight), said_recovered_s=said_recovered_s, all_done_s=t_all,
           requeue_after_s=requeue_after)
    assert said_recovered_s < requeue_after


@pytest.mark.slow
def test_two_workers_on_one_device_one_killed_mid_batch_every_image_done_exactly_once(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    """Several worker processes per device (WORKERS_PER_GPU on a GPU; here two on the CPU)
    share one queue with prefetch 1 and acks_late: killing one mid-batch loses and doubles
    nothing, and the other goes on serving meanwhile."""
    s = fast_recovery(settings.model_copy(update={"inference_streams": 1, "decode_threads": 1}))
    total = 240
    paths = write_images(tmp_path / "inbox-files", total)
    logs = tmp_path / "logs"
    with roles() as started:
        started.append(first := start_worker(s, logs, "worker-a"))
        started.append(second := start_worker(s, logs, "worker-b"))
        started.append(start_beat(s, logs))
        enqueue(s, session_factory, paths)
        wait_for(lambda: status_counts(session_factory)["done"] >= 40, 120,
                 lambda: "40 done\n" + first.tail() + second.tail())
        first.kill9()
        held = unacked_hashes(s.redis_url or "")
        done_at_kill = status_counts(session_factory)["done"]
        wait_for(lambda: status_counts(session_factory)["queued"] == 0, 240,
                 lambda: f"all done\n{status_counts(session_factory)}\n{second.tail()}")
        time.sleep(RECONCILE_INTERVAL_S + 1)  # a late duplicate delivery would land now
        assert second.alive(), second.tail()
    assert_exactly_once(session_factory, total)
    assert held, "the kill did not land while the killed worker held messages"
    report("two workers, one kill -9", images=total, done_at_kill=done_at_kill,
           held_by_the_killed=len(held))


# --- the reconciler under a backlog ------------------------------------------------------------


@pytest.mark.slow
def test_backlog_longer_than_requeue_after_is_not_resent_nor_given_up(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    """A burst that takes several requeue_after_s periods to classify: rows waiting their turn
    in the queue are not "stuck". They must not be sent again and again (each resend is more
    work) nor failed for "too many deliveries" without ever being tried."""
    s = fast_recovery(settings, requeue_after_s=1.0, reconcile_interval_s=1.0, max_attempts=2)
    total = 400
    paths = write_images(tmp_path / "inbox-files", total)
    logs = tmp_path / "logs"
    with roles() as started:
        started.append(start_beat(s, logs))
        enqueue(s, session_factory, paths)
        time.sleep(4)  # the backlog waits for a worker: several reconcile ticks go by
        started.append(worker := start_worker(s, logs))
        t0 = time.monotonic()
        wait_for(lambda: status_counts(session_factory)["queued"] == 0, 180,
                 lambda: f"all settled {status_counts(session_factory)}\n{worker.tail()}")
        elapsed = time.monotonic() - t0
        log = worker.log.read_text(errors="replace")
    resent = sum(int(m) for m in re.findall(r"re-sent (\d+) stuck image", log))
    counts = status_counts(session_factory)
    report("backlog", images=total, classify_s=elapsed, resent=resent,
           attempts_max=max_attempts_seen(session_factory), **counts)
    assert counts == {"queued": 0, "done": total, "failed": 0}, counts
    # A reconcile task waits its turn in the same FIFO queue (and expires after one
    # interval), so it only ever finds the few messages a worker holds in flight.
    assert resent <= total // 10, f"{resent} of {total} re-sent: the backlog was amplified"
    assert_exactly_once(session_factory, total)


# --- 2. Redis restarted (no persistence) / flushed ---------------------------------------------


@pytest.mark.slow
def test_redis_restarted_without_persistence_all_done_from_the_ledger(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "own-redis", persist=False)
    server.start()
    try:
        s = fast_recovery(settings, redis_url=server.url)
        total = 240
        paths = write_images(tmp_path / "inbox-files", total)
        logs = tmp_path / "logs"
        with roles() as started:
            started.append(worker := start_worker(s, logs))
            started.append(start_beat(s, logs))
            enqueue(s, session_factory, paths)
            wait_for(lambda: status_counts(session_factory)["done"] >= 40, 120,
                     lambda: "40 done\n" + worker.tail())
            server.stop()  # SIGTERM; no AOF/RDB: the queue is gone
            t_down = time.monotonic()
            at_stop = status_counts(session_factory)
            time.sleep(2.0)  # the worker and beat see the broker vanish
            server.start()  # same port, empty
            assert queue_depth(server.url) == 0
            wait_for(lambda: status_counts(session_factory)["queued"] == 0, 120,
                     lambda: f"all done {status_counts(session_factory)}\n{worker.tail()}")
            t_all = time.monotonic() - t_down
            assert worker.alive(), worker.tail()
        assert at_stop["queued"] > 0, "Redis went down after everything was done"
        assert_exactly_once(session_factory, total)
        report("redis restarted, queue lost", images=total, queued_at_stop=at_stop["queued"],
               down_s=2.0, all_done_after_stop_s=t_all)
        bound = 2.0 + REQUEUE_AFTER_S + RECONCILE_INTERVAL_S + 10  # + reconnect backoff
        assert t_all <= bound, f"{t_all:.1f}s, over {bound:.1f}s"
    finally:
        server.stop()


@pytest.mark.slow
def test_redis_flushed_while_files_queued_all_done_from_the_ledger(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    s = fast_recovery(settings)
    total = 240
    paths = write_images(tmp_path / "inbox-files", total)
    logs = tmp_path / "logs"
    with roles() as started:
        started.append(worker := start_worker(s, logs))
        started.append(start_beat(s, logs))
        enqueue(s, session_factory, paths)
        wait_for(lambda: status_counts(session_factory)["done"] >= 40, 120,
                 lambda: "40 done\n" + worker.tail())
        client = redis.Redis.from_url(s.redis_url or "")
        client.flushall()  # the queue, the unacked messages, the locks: all gone
        client.close()
        t_flush = time.monotonic()
        at_flush = status_counts(session_factory)
        wait_for(lambda: status_counts(session_factory)["queued"] == 0, 120,
                 lambda: f"all done {status_counts(session_factory)}\n{worker.tail()}")
        t_all = time.monotonic() - t_flush
    assert at_flush["queued"] > 0, "the flush came after everything was done"
    assert_exactly_once(session_factory, total)
    bound = REQUEUE_AFTER_S + RECONCILE_INTERVAL_S + 15
    report("redis flushed", images=total, queued_at_flush=at_flush["queued"],
           all_done_after_flush_s=t_all, bound_s=bound)
    assert t_all <= bound


# --- 3. the database locked / restarted ---------------------------------------------------------


@pytest.mark.slow
def test_sqlite_locked_longer_than_busy_timeout_nothing_lost(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    s = fast_recovery(settings)
    total = 120
    paths = write_images(tmp_path / "inbox-files", total)
    logs = tmp_path / "logs"
    hold_s = 8.0  # > the 5 s busy timeout: at least one write attempt fails "database is locked"
    with roles() as started:
        started.append(worker := start_worker(s, logs))
        started.append(start_beat(s, logs))
        enqueue(s, session_factory, paths)
        wait_for(lambda: status_counts(session_factory)["done"] >= 16, 120,
                 lambda: "16 done\n" + worker.tail())
        lock = ExclusiveSqliteLock(sqlite_path(s), hold_s).start()
        t_lock = time.monotonic()
        lock.join()
        wait_for(lambda: status_counts(session_factory)["queued"] == 0, 120,
                 lambda: f"all done {status_counts(session_factory)}\n{worker.tail()}")
        t_all = time.monotonic() - t_lock
        # a second, shorter lock while idle: nothing to lose, but nothing must break either
        assert worker.alive(), worker.tail()
        log = worker.log.read_text(errors="replace")
    assert "database is locked" in log, "the lock never got in the worker's way"
    assert_exactly_once(session_factory, total)
    report("sqlite locked", images=total, lock_held_s=hold_s, all_done_after_lock_s=t_all,
           retries_logged=log.count("retry"))


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_restarted_while_classifying_nothing_lost(
    settings: Settings,
    tmp_path: Path,
    postgres_server,
    fresh_postgres_url: str,
) -> None:
    from db import migrate

    s = fast_recovery(settings, database_url=fresh_postgres_url)
    migrate.upgrade(s.db_url)
    engine = make_engine(s.db_url)
    sessions = make_sessionmaker(engine)
    total = 480
    paths = write_images(tmp_path / "inbox-files", total)
    logs = tmp_path / "logs"
    try:
        with roles() as started:
            started.append(worker := start_worker(s, logs))
            started.append(start_beat(s, logs))
            enqueue(s, sessions, paths[:240])
            wait_for(lambda: status_counts(sessions)["done"] >= 40, 120,
                     lambda: "40 done\n" + worker.tail())
            # A crash (no checkpoint, connections cut), back within the worker's in-process
            # write retries (~5 s of backoff).
            t0 = time.monotonic()
            postgres_server.restart(mode="immediate", down_for=3.0)
            short_down = time.monotonic() - t0
            engine.dispose()
            wait_for(lambda: status_counts(sessions)["queued"] == 0, 120,
                     lambda: f"all done {status_counts(sessions)}\n{worker.tail()}")
            short_all = time.monotonic() - t0
            # Down for longer than those retries: the batch write gives up, the task is
            # retried with backoff (and the reconciler re-sends what is left).
            enqueue(s, sessions, paths[240:])
            wait_for(lambda: status_counts(sessions)["done"] >= 280, 120,
                     lambda: "280 done\n" + worker.tail())
            t1 = time.monotonic()
            postgres_server.restart(mode="fast", down_for=12.0)
            long_down = time.monotonic() - t1
            engine.dispose()
            wait_for(lambda: status_counts(sessions)["queued"] == 0, 180,
                     lambda: f"all done {status_counts(sessions)}\n{worker.tail()}")
            long_all = time.monotonic() - t1
            assert worker.alive(), worker.tail()
            log = worker.log.read_text(errors="replace")
        assert "writing a batch failed" in log, "the restarts never got in the worker's way"
        assert_exactly_once(sessions, total)
        report("postgres restarted", images=total, crash_down_s=short_down,
               all_done_after_crash_s=short_all, long_down_s=long_down,
               all_done_after_long_outage_s=long_all, max_attempts=max_attempts_seen(sessions))
        assert max_attempts_seen(sessions) <= s.max_attempts
    finally:
        postgres_server.ensure_running()
        engine.dispose()


# --- 5. a file deleted, replaced or moved between enqueue and decode ---------------------------


def test_file_deleted_replaced_or_moved_between_enqueue_and_decode(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    """Queued while no worker runs; then, before any worker reads them, one file is deleted,
    one replaced by new bytes, one moved to a subfolder. Then the real watcher starts (its
    rescan records the new content and the new path), then a worker. The deleted one fails
    with a clear reason; the replaced one's old content fails "changed", its new content is
    done as a new image; the moved one is done from its new path; the neighbour is untouched."""
    from tests.helpers.images import write_image

    s = fast_recovery(settings)
    inbox = s.inbox
    names = ["keep", "gone", "swap", "moved"]
    keep, gone, swap, moved = (write_image(inbox / f"{n}.jpg", i) for i, n in enumerate(names))
    old = enqueue(s, session_factory, [keep, gone, swap, moved])
    old_swap = next(i.sha256 for i in old if i.path == str(swap))
    gone.unlink()
    write_image(swap, seed=99)
    (inbox / "sub").mkdir()
    moved_to = moved.rename(inbox / "sub" / "moved.jpg")
    logs = tmp_path / "logs"
    with roles() as started:
        # The real watcher: its start-up rescan records the new content and the new path.
        started.append(watcher := start_role(s, logs, "watch", "watch"))
        wait_for(lambda: _paths_recorded(session_factory) == 5, 60,
                 lambda: "the watcher's records\n" + watcher.tail())
        assert status_counts(session_factory)["queued"] == 5  # 4 old + swap's new content
        started.append(worker := start_worker(s, logs))
        started.append(start_beat(s, logs))
        took = wait_for(lambda: status_counts(session_factory)["queued"] == 0, 90,
                        lambda: f"settled {status_counts(session_factory)}\n{worker.tail()}")
        time.sleep(RECONCILE_INTERVAL_S)  # nothing settled is sent or changed again
    assert_exactly_once(session_factory, 3)  # keep, swap's new content, moved
    with transaction(session_factory) as session:
        rows = {i.sha256: i for i in session.scalars(select(Image))}
        by_path = {p.path: i for i in rows.values() for p in i.paths}
    assert by_path[str(keep)].status == ImageStatus.DONE
    assert by_path[str(gone)].status == ImageStatus.FAILED
    assert by_path[str(gone)].error == "file vanished before it could be read"
    assert rows[old_swap].status == ImageStatus.FAILED
    assert "changed after it was queued" in (rows[old_swap].error or "")
    assert by_path[str(swap)].sha256 != old_swap and by_path[str(swap)].status == "done"
    assert by_path[str(moved_to)].status == ImageStatus.DONE, by_path[str(moved_to)].error
    report("file moved after enqueue", recovered_s=took)


# --- 6. disk full while writing a model version -----------------------------------------------


def _models_invariants(s: Settings, sessions) -> None:  # type: ignore[no-untyped-def]
    """No visible version directory without its model.pt; the active row's file exists and
    loads (weights_only); only hidden .tmp-* leftovers may remain from a killed save."""
    from db.versions import active_model
    from worker.model import model_store

    if s.models_path.exists():
        for entry in s.models_path.iterdir():
            if entry.name.startswith(".tmp-"):
                continue
            assert (entry / model_store.MODEL_FILE).is_file(), f"half-written version {entry}"
            assert (entry / model_store.META_FILE).is_file(), f"half-written version {entry}"
    with transaction(sessions) as session:
        active = active_model(session)
        assert active is not None
        if active.trained:
            assert Path(active.weights).is_file(), f"active {active.name} has no file"
            model_store.load_version(s.models_path, active.id)


@pytest.mark.slow
def test_disk_full_while_writing_a_model_version_keeps_the_old_model_active(
    settings: Settings, session_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The models folder is a real 60 MB tmpfs: version 1 (~45 MB for resnet18) fits, the
    next one cannot. Where mounting is not allowed, torch.save is made to fail with ENOSPC
    after writing part of the file (the fallback is reported)."""
    from db.models import ModelStatus, ModelVersion, RunStatus
    from db.versions import active_model
    from tests.helpers.faults import enospc, small_filesystem
    from tests.helpers.training import COLOURS, make_labeled, training_settings, write_class
    from worker.classify.model_holder import ModelHolder
    from worker.training.run import run_training

    s = training_settings(settings)
    make_labeled(s.labeled_path, per_class=12)
    with small_filesystem(s.models_path, "60m") as how:
        first = run_training(s, session_factory)
        assert first.status == RunStatus.PROMOTED, first.message
        write_class(s.labeled_path / "blue", COLOURS["blue"], 2, start=500)  # new data
        if how == "none":
            import worker.model.model_store as store

            def partial_then_enospc(obj, target, *a, **k):  # type: ignore[no-untyped-def]
                if hasattr(target, "write"):
                    target.write(b"\0" * 1_000_000)
                else:
                    Path(target).write_bytes(b"\0" * 1_000_000)
                enospc()

            monkeypatch.setattr(store.torch, "save", partial_then_enospc)
        t0 = time.monotonic()
        second = run_training(s, session_factory)
        took = time.monotonic() - t0
        assert second.status == RunStatus.FAILED, second.message
        assert "No space left on device" in second.message, second.message
        assert "the active model is unchanged" in second.message
        assert sorted(p.name for p in s.models_path.iterdir()) == [str(first.version_id)]
        _models_invariants(s, session_factory)
        with transaction(session_factory) as session:
            assert active_model(session).id == first.version_id  # type: ignore[union-attr]
            failed = session.get(ModelVersion, second.version_id)
            assert failed is not None and failed.status == ModelStatus.REJECTED
        # A worker starting now classifies with version 1.
        assert ModelHolder(s, session_factory).current().version_id == first.version_id
        free = os.statvfs(s.models_path)
    report("disk full saving a model", how=how, run_s=took,
           free_mb=free.f_bavail * free.f_frsize / 2**20, message=second.message)


# --- 7. retraining killed mid-run ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("when", ["training", "saving"])
def test_retrain_killed_mid_run_leaves_no_half_written_model_and_next_run_is_clean(
    settings: Settings, session_factory, tmp_path: Path, when: str
) -> None:
    """kill -9 `inbox-classifier retrain --here` during an epoch, or while it writes the model
    files (the moment models/.tmp-* exists)."""
    from db.models import RunStatus, TrainingRun
    from tests.helpers.training import make_labeled, training_settings
    from worker.training.lock import LOCK_NAME
    from worker.training.run import run_training

    s = training_settings(settings, train_epochs=30, train_patience=30)
    make_labeled(s.labeled_path, per_class=12)
    first = run_training(s, session_factory)
    assert first.status == RunStatus.PROMOTED, first.message
    logs = tmp_path / "logs"
    role = start_role(s, logs, "retrain", "retrain", "--here", "--force")

    def hit() -> bool:
        if not role.alive():
            raise AssertionError(f"retrain ended before the kill\n{role.tail()}")
        if when == "saving":
            return any(p.name.startswith(".tmp-") for p in s.models_path.iterdir())
        with transaction(session_factory) as session:
            return any((r.progress or {}).get("epoch", 0) >= 1 and r.id != first.run_id
                       for r in session.scalars(select(TrainingRun)))

    try:
        wait_for(hit, 120, lambda: f"the {when} phase\n{role.tail()}", every=0.002)
    finally:
        role.kill9()
    leftovers = [p.name for p in s.models_path.iterdir() if p.name.startswith(".tmp-")]
    _models_invariants(s, session_factory)
    with transaction(session_factory) as session:
        killed = session.scalars(
            select(TrainingRun).where(TrainingRun.id != first.run_id)).one()
        killed_id = killed.id
        assert killed.status == RunStatus.RUNNING  # nobody could say otherwise yet

    # Its Redis lock would expire on its own (LOCK_TIMEOUT_S, see test_training.py); here we
    # let it expire now, then run again with a short timeout so its silence counts as death.
    client = redis.Redis.from_url(s.redis_url or "")
    client.delete(LOCK_NAME)
    client.close()
    t0 = time.monotonic()
    outcome = None
    while time.monotonic() - t0 < 30:
        outcome = run_training(s, session_factory, force=True, lock_timeout_s=2)
        if outcome.status != RunStatus.SKIPPED:
            break
        time.sleep(0.5)
    assert outcome is not None and outcome.status in (RunStatus.PROMOTED, RunStatus.REJECTED), (
        outcome.message if outcome else None)
    assert not any(p.name.startswith(".tmp-") for p in s.models_path.iterdir())
    _models_invariants(s, session_factory)
    with transaction(session_factory) as session:
        killed = session.get(TrainingRun, killed_id)
        assert killed is not None and killed.status == RunStatus.FAILED
        assert "interrupted" in (killed.message or "")
    report(f"retrain killed while {when}", tmp_leftover_after_kill=len(leftovers),
           next_run=outcome.status, next_run_after_s=time.monotonic() - t0)


# --- 4. the watcher killed while files arrive; a burst of 10,000 -------------------------------


def _paths_recorded(sessions) -> int:  # type: ignore[no-untyped-def]
    from sqlalchemy import func

    from db.models import ImagePath

    with transaction(sessions) as session:
        return int(session.execute(select(func.count()).select_from(ImagePath)).scalar_one())


@pytest.mark.slow
def test_watcher_killed_while_files_arrive_all_found_after_restart(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    import threading

    from tests.helpers.images import random_image

    s = fast_recovery(settings)
    total = 300
    staging = tmp_path / "staging"
    staging.mkdir()
    logs = tmp_path / "logs"

    def producer() -> None:  # ~100 files/s, each written elsewhere and moved in
        for i in range(total):
            path = staging / f"img_{i:04d}.jpg"
            random_image(i).save(path, "JPEG")
            os.replace(path, s.inbox / path.name)
            time.sleep(0.01)

    with roles() as started:
        started.append(start_worker(s, logs))
        started.append(start_beat(s, logs))
        started.append(watcher := start_role(s, logs, "watch1", "watch"))
        wait_for(lambda: "watching" in watcher.log.read_text(errors="replace"), 60,
                 lambda: "watcher up\n" + watcher.tail())
        writer = threading.Thread(target=producer)
        writer.start()
        wait_for(lambda: _paths_recorded(session_factory) >= 40, 60,
                 lambda: "40 recorded\n" + watcher.tail())
        watcher.kill9()
        at_kill = _paths_recorded(session_factory)
        time.sleep(1.0)  # files keep arriving while nobody watches
        started.append(again := start_role(s, logs, "watch2", "watch"))
        t_restart = time.monotonic()
        writer.join()
        wait_for(lambda: status_counts(session_factory)["done"] == total, 120,
                 lambda: f"{total} done {status_counts(session_factory)}\n{again.tail()}")
        t_all = time.monotonic() - t_restart
        time.sleep(RECONCILE_INTERVAL_S)
    assert at_kill < total, "the kill came after every file was recorded"
    assert _paths_recorded(session_factory) == total
    assert_exactly_once(session_factory, total)
    report("watcher kill -9 while files arrive", files=total, recorded_at_kill=at_kill,
           all_done_after_restart_s=t_all)


@pytest.mark.slow
def test_burst_of_10000_files_all_recorded_by_the_watcher(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    """10,000 small files in a few seconds, no worker running (classifying them would take
    minutes on two cores; this is about the watcher). Every one is recorded: what inotify
    drops on overflow, the rescan finds."""
    s = settings.model_copy(update={"rescan_interval_s": 5.0, "quiet_period_s": 0.5})
    total = 10_000
    logs = tmp_path / "logs"
    with roles() as started:
        started.append(watcher := start_role(s, logs, "watch", "watch"))
        wait_for(lambda: "watching" in watcher.log.read_text(errors="replace"), 60,
                 lambda: "watcher up\n" + watcher.tail())
        # Freeze the watcher while the burst lands: nobody reads its inotify queue, which
        # holds 16384 events (fs.inotify.max_queued_events here) while 10,000 files make
        # ~30,000 (create, modify, close-write): a real IN_Q_OVERFLOW, without touching the
        # machine-wide limit. The rescan must find what the events lost.
        queue_limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
        folders = [s.inbox / f"burst{i}" for i in range(10)]
        for folder in folders:
            folder.mkdir()
        time.sleep(1.0)  # the watcher adds its watches on the new folders
        os.kill(watcher.process.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        for i in range(total):
            # distinct content per file; not images (no worker reads them here)
            fd = os.open(folders[i % 10] / f"f{i:05d}.jpg", os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, b"burst file %d\n" % i * 4)
            os.close(fd)
        t_written = time.monotonic() - t0
        time.sleep(max(0.0, 2.0 - t_written))  # "a few seconds"
        os.kill(watcher.process.pid, signal.SIGCONT)
        wait_for(lambda: _paths_recorded(session_factory) >= total, 120,
                 lambda: f"{total} recorded, have {_paths_recorded(session_factory)}\n"
                 + watcher.tail(), every=0.2)
        t_all = time.monotonic() - t0
        assert watcher.alive(), watcher.tail()
        log = watcher.log.read_text(errors="replace")
    counts = status_counts(session_factory)
    assert counts["queued"] == total
    if queue_limit < 3 * total:  # the burst did overflow the queue: the rescan found the rest
        assert "inotify queue overflowed" in log.lower(), "expected an inotify overflow"
    report("burst of 10,000 files", files=total, written_in_s=t_written,
           all_recorded_after_s=t_all, files_per_s=total / t_all,
           inotify_queue_limit=queue_limit, overflow_logged="overflow" in log.lower())
