"""The web app on a real ledger: seeding classified images (real files in the inbox, real
ledger writes) and a client that talks to the app as a browser on this machine would."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from contract.records import Classified, SeenFile
from contract.settings import Settings
from db.batch_write import save_results
from db.engine import transaction
from db.ledger import record_files
from db.versions import ensure_base_model
from tests.helpers.images import write_image
from web.app import create_app

CLASSES = ["cat", "dog", "bird", "fish"]


@dataclass(frozen=True)
class Seeded:
    path: Path
    sha256: str
    label: str
    confidence: float


def topk(label: str, confidence: float) -> list[dict[str, object]]:
    """A top-k whose margin is ``2 * confidence - 1`` (the runner-up gets the rest)."""
    second = next(c for c in CLASSES if c != label)
    return [
        {"label": label, "confidence": confidence},
        {"label": second, "confidence": round(1 - confidence, 6)},
    ]


def seed_images(
    settings: Settings,
    sessions: sessionmaker[Session],
    specs: Sequence[tuple[str, float]],
    start: int = 0,
    subfolder: str = "",
    size: tuple[int, int] = (96, 72),
) -> list[Seeded]:
    """Write one real image per (label, confidence) into the inbox, record it as the watcher
    would, and save its result as a worker would (base model, weights none)."""
    out = []
    for i, (label, confidence) in enumerate(specs):
        path = settings.inbox / subfolder / f"img_{start + i:05d}.png"
        write_image(path, start + i, size)
        data = path.read_bytes()
        out.append(Seeded(path, hashlib.sha256(data).hexdigest(), label, confidence))
    with transaction(sessions) as session:
        record_files(
            session,
            [
                SeenFile(str(s.path), s.sha256, s.path.stat().st_size, s.path.stat().st_mtime_ns)
                for s in out
            ],
        )
        base = ensure_base_model(session, "resnet18", "none", CLASSES)
        save_results(
            session,
            base.id,
            [Classified(s.sha256, s.label, s.confidence, topk(s.label, s.confidence)) for s in out],
        )
    return out


def client(settings: Settings, host: str | None = None) -> TestClient:
    """A client on http://127.0.0.1 (the app serves loopback names only when bound there)."""
    return TestClient(create_app(settings, host), base_url="http://127.0.0.1:8000")
