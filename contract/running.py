"""The running system's configuration, recorded in its data dir, so that a command run against
that data dir (``status``, ``retrain``, ``models``...) uses what the running system uses
instead of its own defaults, and says so where its own settings were chosen otherwise.

``up`` and each role write ``<data_dir>/running/<role>.<pid>.json`` when they start (written
to a temporary file and renamed) and remove it when they stop; a record whose process is gone
(killed) is ignored and removed by the next reader. Only non-secret values are recorded: a
URL's password is replaced by ``***`` and only a hash of the full URL is kept to compare.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from contract.settings import Settings

FOLDER = "running"

#: What a command is told about, by the name a person knows it by. Model, weights, device and
#: the labeled folder are adopted from the running system where the command did not set them.
ADOPTED = {"model": "model", "weights": "weights", "device": "device"}


@dataclass(frozen=True)
class Recorded:
    role: str
    pid: int
    started_at: float
    values: dict[str, Any]  # name -> shown value
    digests: dict[str, str]  # name -> sha256 of the full value (URLs)
    path: Path


@dataclass(frozen=True)
class Difference:
    name: str  # model, weights, device, labeled dir, database, redis
    ours: str
    theirs: str
    role: str
    pid: int


def mask(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _compared(settings: Settings) -> dict[str, str]:
    """The values a command and the running system must agree on (full, secrets included)."""
    values = {
        "model": settings.model,
        "weights": settings.weights,
        "device": settings.device,
        "labeled dir": str(settings.labeled_path.resolve()),
        "database": settings.db_url,
    }
    if settings.redis_url:
        values["redis"] = settings.redis_url
    return values


def folder(settings: Settings) -> Path:
    return settings.data_dir / FOLDER


def record(settings: Settings, role: str) -> Path:
    """Write this process's record; returns its path (for :func:`forget`)."""
    where = folder(settings)
    where.mkdir(parents=True, exist_ok=True)
    compared = _compared(settings)
    data = {
        "role": role,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": time.time(),
        "values": {k: mask(v) for k, v in compared.items()},
        "digests": {k: _digest(v) for k, v in compared.items()},
    }
    path = where / f"{role}.{os.getpid()}.json"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=2))
    os.replace(temporary, path)
    return path


def forget(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


@contextlib.contextmanager
def recorded(settings: Settings, role: str) -> Iterator[None]:
    """Record this process's configuration while the block runs."""
    path = record(settings, role)
    try:
        yield
    finally:
        forget(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def running(settings: Settings) -> list[Recorded]:
    """The live records in ``settings``' data dir, oldest first (``up`` before its roles).
    Records of this host's dead processes are removed; other hosts' are kept (a shared data
    dir) and trusted."""
    where = folder(settings)
    if not where.is_dir():
        return []
    found = []
    host = socket.gethostname()
    for path in sorted(where.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            pid = int(data["pid"])
            item = Recorded(
                str(data["role"]),
                pid,
                float(data["started_at"]),
                dict(data["values"]),
                dict(data["digests"]),
                path,
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or not ours: not a record to act on
        if data.get("host") == host and not _alive(pid):
            forget(path)
            continue
        found.append(item)
    return sorted(found, key=lambda r: r.started_at)


def differences(settings: Settings, records: list[Recorded]) -> list[Difference]:
    """Where ``settings`` and the running system disagree, once per name and value."""
    ours = _compared(settings)
    seen: set[tuple[str, str]] = set()
    found = []
    for item in records:
        for name, digest in item.digests.items():
            if name not in ours or _digest(ours[name]) == digest:
                continue
            theirs = str(item.values.get(name, "?"))
            if (name, theirs) in seen:
                continue
            seen.add((name, theirs))
            found.append(Difference(name, mask(ours[name]), theirs, item.role, item.pid))
    return found


def adopt(settings: Settings, records: list[Recorded]) -> Settings:
    """``settings`` with the running system's model, weights, device and labeled dir where
    the command did not choose them (no flag, variable or ``.env`` entry) and every running
    process agrees on them."""
    chosen = settings.model_fields_set
    update: dict[str, Any] = {}
    for name, field in (*ADOPTED.items(), ("labeled dir", "labeled_dir")):
        if field in chosen:
            continue
        values = {str(r.values[name]) for r in records if name in r.values}
        if len(values) == 1:
            value = values.pop()
            update[field] = Path(value) if field == "labeled_dir" else value
    if not update:
        return settings
    adopted = settings.model_copy(update=update)
    # Adopted values are not the command's own choice: they stay out of model_fields_set.
    object.__setattr__(adopted, "__pydantic_fields_set__", set(chosen))
    return adopted
