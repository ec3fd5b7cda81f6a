"""Helpers for tests that run the real pipeline pieces."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from contract.messages import WorkItem
from contract.records import SeenFile
from db.engine import transaction
from db.ledger import record_files
from db.models import Image, ImageStatus


def seen(path: Path) -> SeenFile:
    data = path.read_bytes()
    st = path.stat()
    return SeenFile(str(path), hashlib.sha256(data).hexdigest(), st.st_size, st.st_mtime_ns)


def record(sessions: sessionmaker[Session], paths: Sequence[Path]) -> list[WorkItem]:
    with transaction(sessions) as session:
        return record_files(session, [seen(p) for p in paths])


def count(sessions: sessionmaker[Session], *statuses: ImageStatus) -> int:
    with transaction(sessions) as session:
        query = select(func.count()).select_from(Image)
        if statuses:
            query = query.where(Image.status.in_([s.value for s in statuses]))
        return int(session.execute(query).scalar_one())


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, every: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)
