"""Model versions in the ledger: the base model a worker registers, the candidates training
creates, and which one is active. Each function runs inside the caller's transaction."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from contract.clock import iso, utcnow
from contract.serving import ServingRecord
from db.models import ModelStatus, ModelVersion, TrainingRun, VersionScore


def base_model_name(arch: str, weights: str) -> str:
    return f"base:{arch}:{weights}"


def active_model(session: Session) -> ModelVersion | None:
    return session.scalars(
        select(ModelVersion).where(ModelVersion.status == ModelStatus.ACTIVE).limit(1)
    ).first()


def get(session: Session, version_id: int) -> ModelVersion | None:
    return session.get(ModelVersion, version_id)


def all_versions(session: Session) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id)))


def ensure_base_model(
    session: Session, arch: str, weights: str, classes: list[str]
) -> ModelVersion:
    """Register the configured base model and return the active model.

    A trained model that is active stays active. If the active model is another base (the
    configuration changed) or there is none, the configured base becomes active.
    """
    name = base_model_name(arch, weights)
    base = session.scalars(select(ModelVersion).where(ModelVersion.name == name)).first()
    if base is None:
        base = ModelVersion(
            name=name,
            arch=arch,
            weights=weights,
            classes=classes,
            status=ModelStatus.RETIRED.value,
            trained=False,
        )
        session.add(base)
        session.flush()
    current = active_model(session)
    if current is not None and (current.trained or current.id == base.id):
        return current
    activate(session, base)
    return base


class RealModelsHere(ValueError):
    """The no-model backend was asked to serve a data dir that has real model versions."""


def ensure_null_model(session: Session, arch: str, classes: list[str]) -> ModelVersion:
    """Register the no-model backend's version (``base:<arch>:<arch>``) and make it active,
    only where the data dir holds no other version. Raises :class:`RealModelsHere`."""
    name = base_model_name(arch, arch)
    others = session.scalars(select(ModelVersion.name).where(ModelVersion.name != name)).all()
    if others:
        raise RealModelsHere(
            f"this data dir has real model versions ({', '.join(others[:3])}"
            f"{', ...' if len(others) > 3 else ''}): INFERENCE_BACKEND=null is for benchmarks "
            "and tests on a data dir of its own (--data-dir)"
        )
    return ensure_base_model(session, arch, arch, classes)


def base_version_id(session: Session, arch: str, weights: str) -> int:
    """The id of a registered base model's row."""
    name = base_model_name(arch, weights)
    return session.scalars(select(ModelVersion.id).where(ModelVersion.name == name)).one()


def activate(session: Session, version: ModelVersion) -> None:
    """Make ``version`` the one active model; the previous one is retired."""
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.status == ModelStatus.ACTIVE, ModelVersion.id != version.id)
        .values(status=ModelStatus.RETIRED.value)
    )
    version.status = ModelStatus.ACTIVE.value
    version.activated_at = utcnow()
    session.flush()


def previously_active(session: Session) -> ModelVersion | None:
    """The version that was active before the current one (what a rollback goes back to)."""
    return session.scalars(
        select(ModelVersion)
        .where(ModelVersion.activated_at.is_not(None), ModelVersion.status != ModelStatus.ACTIVE)
        .order_by(ModelVersion.activated_at.desc(), ModelVersion.id.desc())
    ).first()


class NoSuchVersion(LookupError):
    pass


@dataclass(frozen=True)
class SwitchTarget:
    id: int
    name: str
    trained: bool
    weights: str
    already_active: bool


def switch_target(session: Session, version_id: int | None) -> SwitchTarget:
    """The version a promote (``version_id``) or a rollback (None: the one active before the
    current one) would make active. Raises :class:`NoSuchVersion` with a message."""
    if version_id is None:
        row = previously_active(session)
        if row is None:
            raise NoSuchVersion("no previously active model version to go back to")
    else:
        row = session.get(ModelVersion, version_id)
        if row is None:
            raise NoSuchVersion(f"no model version {version_id}")
    return SwitchTarget(
        row.id, row.name, row.trained, row.weights, row.status == ModelStatus.ACTIVE
    )


@dataclass(frozen=True)
class VersionView:
    """A model version as the web app and the CLI list it."""

    id: int
    name: str
    arch: str
    status: str
    trained: bool
    classes: list[str]
    val_accuracy: float | None
    per_class_accuracy: dict[str, Any] | None
    reason: str | None
    weights: str
    created_at: str | None
    activated_at: str | None
    calibration: dict[str, Any] | None = None
    serving: ServingRecord | None = None
    manifest_sha256: str | None = None  # the labeled data it was trained on (training's skip)

    @classmethod
    def of(cls, row: ModelVersion) -> VersionView:
        return cls(
            row.id,
            row.name,
            row.arch,
            row.status,
            row.trained,
            [str(c) for c in row.classes],
            row.val_accuracy,
            row.per_class_accuracy,
            row.reason,
            row.weights,
            iso(row.created_at),
            iso(row.activated_at),
            dict(row.calibration) if row.calibration else None,
            ServingRecord.from_dict(row.serving),
            row.manifest_sha256,
        )


def views(session: Session) -> list[VersionView]:
    """Every version, newest first."""
    rows = session.scalars(select(ModelVersion).order_by(ModelVersion.id.desc()))
    return [VersionView.of(r) for r in rows]


def report(session: Session, version_id: int) -> dict[str, Any] | None:
    row = session.get(ModelVersion, version_id)
    return dict(row.report) if row is not None and row.report else None


def activate_by_hand(session: Session, version_id: int, verb: str) -> str:
    """Make version ``version_id`` active at a person's request (``verb``: 'promoted' or
    'rolled back'), noting it in its reason. Returns the name of the version it replaced."""
    row = session.get(ModelVersion, version_id)
    if row is None:
        raise LookupError(f"no model version {version_id}")
    current = active_model(session)
    previous = current.name if current is not None else "none"
    note = f"{verb} by hand from {previous}"
    if row.status == ModelStatus.REJECTED:
        note += " (overriding the gate)"
    row.reason = f"{note}; earlier: {row.reason}" if row.reason else note
    activate(session, row)
    return previous


def newest_trained(session: Session) -> ModelVersion | None:
    return session.scalars(
        select(ModelVersion)
        .where(ModelVersion.trained.is_(True))
        .order_by(ModelVersion.id.desc())
        .limit(1)
    ).first()


def create_candidate(
    session: Session,
    *,
    run_id: int | None,
    arch: str,
    classes: list[str],
    val_accuracy: float,
    per_class_accuracy: dict[str, Any],
    manifest_sha256: str,
    weights_path: Callable[[int], str],
    report: Mapping[str, Any],
    calibration: dict[str, Any] | None = None,
) -> ModelVersion:
    """A trained version awaiting the gate, named ``v<id>``; ``weights_path(id)`` is where
    its files will be. ``report`` is stored with it, plus a ``version`` entry naming it."""
    version = ModelVersion(
        name=f"pending-{uuid.uuid4().hex}",
        arch=arch,
        weights="",
        classes=list(classes),
        status=ModelStatus.CANDIDATE.value,
        trained=True,
        val_accuracy=val_accuracy,
        per_class_accuracy=per_class_accuracy,
        manifest_sha256=manifest_sha256,
        calibration=calibration,
        reason="awaiting the gate",
    )
    session.add(version)
    session.flush()
    version.name = f"v{version.id}"
    version.weights = weights_path(version.id)
    version.report = {**report, "version": {"id": version.id, "name": version.name}}
    run = session.get(TrainingRun, run_id) if run_id is not None else None
    if run is not None:
        run.model_version_id = version.id
    session.flush()
    return version


def reject(session: Session, version_id: int, reason: str) -> None:
    row = session.get(ModelVersion, version_id)
    if row is not None:
        row.status = ModelStatus.REJECTED.value
        row.reason = reason


def settle_candidate(
    session: Session, version_id: int, *, promote: bool, reason: str, compared_with: int | None
) -> tuple[bool, str]:
    """Promote or reject a saved candidate as the gate decided. A trained version made active
    by hand while the candidate trained (not the one the gate ``compared_with``) is not
    overridden. Returns (promoted, reason)."""
    row = session.get(ModelVersion, version_id)
    if row is None:
        raise LookupError(f"no model version {version_id}")
    current = active_model(session)
    if current is not None and current.id != compared_with and current.trained:
        promote = False
        reason = f"not promoted: {current.name} was made active while this run trained ({reason})"
    row.reason = reason
    if promote:
        activate(session, row)
    else:
        row.status = ModelStatus.REJECTED.value
    return promote, reason


def set_serving(session: Session, version_id: int, serving: ServingRecord) -> None:
    """Record how CPU workers serve ``version_id``: what ``serving`` knows (its ONNX artifacts'
    checks, which backend serves and why) is merged into what is recorded."""
    row = session.get(ModelVersion, version_id)
    if row is not None:
        known = ServingRecord.from_dict(row.serving) or ServingRecord()
        row.serving = known.merged(serving).to_dict()


def record_score(
    session: Session, version_id: int, run_id: int | None, images: int, correct: int
) -> None:
    """Keep a version's score on a run's held-out images (nothing for an empty set)."""
    if images <= 0:
        return
    session.add(
        VersionScore(
            model_version_id=version_id,
            run_id=run_id,
            images=images,
            correct=correct,
            accuracy=correct / images,
        )
    )
    session.flush()


@dataclass(frozen=True)
class ScoreView:
    """One held-out score: version ``version`` got ``correct`` of ``images`` in run ``run_id``."""

    version_id: int
    version: str
    run_id: int | None
    images: int
    correct: int
    accuracy: float
    created_at: str | None


def score_history(session: Session, limit: int = 500) -> list[ScoreView]:
    """Held-out scores, oldest first (the newest ``limit``)."""
    rows = session.execute(
        select(VersionScore, ModelVersion.name)
        .join(ModelVersion, ModelVersion.id == VersionScore.model_version_id)
        .order_by(VersionScore.id.desc())
        .limit(limit)
    ).all()
    return [
        ScoreView(
            score.model_version_id,
            name,
            score.run_id,
            score.images,
            score.correct,
            score.accuracy,
            iso(score.created_at),
        )
        for score, name in reversed(rows)
    ]


def latest_scores(history: list[ScoreView]) -> list[ScoreView]:
    """Each version's most recent held-out score, in version order: the Models page's chart."""
    latest: dict[int, ScoreView] = {}
    for point in history:
        latest[point.version_id] = point
    return [latest[v] for v in sorted(latest)]
