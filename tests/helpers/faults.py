"""Fault injection on real parts: kill -9 a role, stop/flush Redis, hold the SQLite write lock,
fill a disk, and check the ledger's promises afterwards (every image settled, one prediction per
image per model version).

Everything here drives real processes and servers; nothing is mocked.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from contract.messages import WorkItem
from contract.paths import from_ledger
from contract.queues import CLASSIFY_QUEUE
from contract.settings import Settings
from db.engine import transaction
from db.ledger import mark_enqueued
from db.models import Image, ImagePath, ImageStatus, Prediction
from tests.helpers.pipeline import record
from tests.helpers.procs import cli, stop

# --- processes ---------------------------------------------------------------------------------


def log_tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def wait_for(
    condition: Callable[[], bool],
    timeout: float,
    what: str | Callable[[], str],
    every: float = 0.05,
) -> float:
    """Poll ``condition`` until true; returns the seconds it took. ``what`` may be a callable
    (evaluated only on timeout, e.g. to attach a log tail)."""
    start = time.monotonic()
    deadline = start + timeout
    while not condition():
        if time.monotonic() > deadline:
            text = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {text}")
        time.sleep(every)
    return time.monotonic() - start


@dataclass
class Role:
    """One `inbox-classifier` role running as a real child process, with its own log."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self) -> str:
        return f"--- {self.name} log ---\n{log_tail(self.log)}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill9(self) -> None:
        """SIGKILL the whole process group: no cleanup, no ack, no goodbye."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def stop(self, timeout: float = 60) -> int:
        return stop(self.process, timeout=timeout)


def start_role(
    settings: Settings, logs: Path, name: str, *args: str, prefix: Sequence[str] = ()
) -> Role:
    """``prefix`` runs it through another command (``ip netns exec <host>``: another host)."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    return Role(name, cli(settings, *args, log=log, prefix=prefix), log)


def start_worker(
    settings: Settings,
    logs: Path,
    name: str = "worker",
    ready: bool = True,
    timeout: float = 90,
    prefix: Sequence[str] = (),
) -> Role:
    """`inbox-classifier worker`; by default waits until Celery says it is ready."""
    role = start_role(
        settings, logs, name, "worker", "--name", f"{name}.{os.getpid()}@test", prefix=prefix
    )
    if ready:
        wait_worker_ready(role, timeout)
    return role


def wait_worker_ready(role: Role, timeout: float = 90) -> float:
    def ready() -> bool:
        if not role.alive():
            raise AssertionError(
                f"{role.name} exited with {role.process.returncode}\n" + role.tail()
            )
        return " ready." in log_tail(role.log, 100_000)

    return wait_for(ready, timeout, lambda: f"{role.name} ready\n{role.tail()}", every=0.1)


def start_beat(settings: Settings, logs: Path, name: str = "beat") -> Role:
    return start_role(settings, logs, name, "beat")


@contextlib.contextmanager
def roles() -> Iterator[list[Role]]:
    """Collects roles started in the block and stops (or kills) all of them at the end."""
    started: list[Role] = []
    try:
        yield started
    finally:
        for role in reversed(started):
            if role.alive():
                role.stop(timeout=30)


# --- the ledger and the queue ------------------------------------------------------------------


def enqueue(
    settings: Settings,
    sessions: sessionmaker[Session],
    paths: Sequence[Path],
    files_per_message: int | None = None,
) -> list[WorkItem]:
    """Do what the watcher does for ``paths``: record, send, mark sent."""
    from broker.app import make_celery
    from broker.send import send_classify

    items = record(sessions, paths)
    app = make_celery(settings)
    try:
        send_classify(app, items, files_per_message or settings.files_per_message)
    finally:
        app.close()
    with transaction(sessions) as session:
        mark_enqueued(session, [i.sha256 for i in items])
    return items


def status_counts(sessions: sessionmaker[Session]) -> dict[str, int]:
    with transaction(sessions) as session:
        counts = {s.value: 0 for s in ImageStatus}
        counts.update(
            dict(session.execute(select(Image.status, func.count()).group_by(Image.status)).all())
        )
        return counts


def rows_by_name(sessions: sessionmaker[Session]) -> dict[str, Image]:
    """file name -> its image row (for corpora whose names are unique)."""
    with transaction(sessions) as session:
        out: dict[str, Image] = {}
        for path, image in session.execute(
            select(ImagePath.path, Image).join(Image, Image.id == ImagePath.image_id)
        ):
            if image in session:  # an image with two paths comes twice
                session.expunge(image)
            out[os.path.basename(from_ledger(path))] = image
        return out


def assert_exactly_once(sessions: sessionmaker[Session], expected_done: int) -> None:
    """``expected_done`` images done, each with exactly one prediction per model version, and
    every done image's current result is one of its predictions."""
    with transaction(sessions) as session:
        done = session.execute(
            select(func.count()).select_from(Image).where(Image.status == ImageStatus.DONE)
        ).scalar_one()
        assert done == expected_done, status_counts(sessions)
        dupes = session.execute(
            select(Prediction.image_id, Prediction.model_version_id, func.count())
            .group_by(Prediction.image_id, Prediction.model_version_id)
            .having(func.count() > 1)
        ).all()
        assert dupes == [], f"images classified twice by one model version: {dupes[:10]}"
        without = session.execute(
            select(func.count())
            .select_from(Image)
            .outerjoin(
                Prediction,
                (Prediction.image_id == Image.id)
                & (Prediction.model_version_id == Image.model_version_id),
            )
            .where(Image.status == ImageStatus.DONE, Prediction.id.is_(None))
        ).scalar_one()
        assert without == 0, f"{without} done image(s) without their prediction row"


def max_attempts_seen(sessions: sessionmaker[Session]) -> int:
    with transaction(sessions) as session:
        return int(session.execute(select(func.max(Image.attempts))).scalar_one() or 0)


def queue_depth(redis_url: str, queue: str = CLASSIFY_QUEUE) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.llen(queue))
    finally:
        client.close()


# --- the database ------------------------------------------------------------------------------


def sqlite_path(settings: Settings) -> str:
    database = make_url(settings.db_url).database
    assert database, settings.db_url
    return database


class ExclusiveSqliteLock:
    """Another writer holding ``BEGIN EXCLUSIVE`` on the ledger for ``hold_s`` seconds, from a
    thread of the test process (its own sqlite3 connection, as any other program would)."""

    def __init__(self, db_file: str, hold_s: float) -> None:
        self.db_file = db_file
        self.hold_s = hold_s
        self.acquired = threading.Event()
        self.released = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sqlite-exclusive", daemon=True)

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.db_file, timeout=30, isolation_level=None)
            try:
                conn.execute("BEGIN EXCLUSIVE")
                self.acquired.set()
                time.sleep(self.hold_s)
                conn.execute("COMMIT")
            finally:
                conn.close()
        except BaseException as exc:  # surfaced by join()
            self.error = exc
            self.acquired.set()
        finally:
            self.released.set()

    def start(self) -> ExclusiveSqliteLock:
        self._thread.start()
        assert self.acquired.wait(30), "could not take the exclusive lock"
        if self.error:
            raise self.error
        return self

    def join(self) -> None:
        self._thread.join(self.hold_s + 30)
        if self.error:
            raise self.error


# --- the disk ----------------------------------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(path: Path, size: str = "1m") -> Iterator[str]:
    """``path`` as a tiny filesystem, so writes past ``size`` fail with a real ENOSPC.

    Yields how: "tmpfs" (a real ``mount -t tmpfs -o size=...``: needs root and CAP_SYS_ADMIN)
    or "none" when mounting is not allowed here (the caller then falls back)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = False
    if os.geteuid() == 0 and shutil.which("mount"):
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        mounted = result.returncode == 0
    try:
        yield "tmpfs" if mounted else "none"
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def enospc(*_: object, **__: object) -> None:
    """A stand-in write that fails the way a full disk does (fallback only)."""
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _message_items(raw: bytes | str) -> list[str]:
    """sha256s carried by one kombu/Celery (protocol 2, JSON) message as Redis stores it."""
    import base64
    import json

    try:
        message = json.loads(raw)
        if isinstance(message, list):  # the `unacked` hash: [message, exchange, routing_key]
            message = message[0]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return [item["sha256"] for item in args[0]["items"]]
    except (ValueError, KeyError, IndexError, TypeError):
        return []


def unacked_hashes(redis_url: str) -> set[str]:
    """Images in messages delivered to a worker and not acknowledged yet (Redis's `unacked`
    hash): after a kill -9, exactly what the dead worker held."""
    client = redis.Redis.from_url(redis_url)
    try:
        out: set[str] = set()
        for raw in client.hvals("unacked"):
            out.update(_message_items(raw))
        return out
    finally:
        client.close()
