"""When a run need not train: nobody labels anything here, or the labeled data is exactly what
a version was already trained on (paperless-ngx's rule: retraining is skipped when the data
is unchanged)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from contract.labeled import VAL_DIR
from db import versions
from db.engine import transaction
from db.models import ModelStatus
from worker.training.start import ActiveInfo


def has_class_dirs(root: Path) -> bool:
    try:
        return any(
            p.is_dir() and not p.name.startswith(".") and p.name != VAL_DIR for p in root.iterdir()
        )
    except OSError:
        return False


def unchanged_reason(
    sessions: sessionmaker[Session], manifest: str, active: ActiveInfo | None
) -> str | None:
    """Why this run need not train: the active model, or the newest trained version (one
    the gate rejected, or rolled back from), was trained on exactly this data. A version
    whose files were never written (a failed save) does not count."""
    if active is not None and active.trained and active.manifest_sha256 == manifest:
        return f"labeled data unchanged since {active.name} was trained"
    with transaction(sessions) as session:
        last = versions.newest_trained(session)
        if (
            last is not None
            and last.manifest_sha256 == manifest
            and last.status != ModelStatus.CANDIDATE
            and Path(last.weights).is_file()
        ):
            return f"labeled data unchanged since {last.name} was trained on it (now {last.status})"
    return None
