"""Promoting, rolling back and cancelling: one set of rules for the CLI and the web app.

A promote or a rollback makes a version active by hand (workers switch within
``MODEL_CHECK_INTERVAL_S``); a trained version whose weights file is gone is refused (a worker
would refuse to load it and stay on the model it has). A cancel stops a queued run at once and
a running one at its next epoch; nothing from it is promoted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from db import runs, versions
from db.engine import transaction
from pipeline.errors import Problem, UseCaseError


@dataclass(frozen=True, slots=True)
class Switched:
    active: str  # the version active now
    previous: str | None  # the one active before (the same name: nothing changed)

    @property
    def changed(self) -> bool:
        return self.active != self.previous


def switch(sessions: sessionmaker[Session], version_id: int | None, verb: str) -> Switched:
    """Make ``version_id`` active (a promote), or with None the version active before the
    current one (a rollback). Raises :class:`UseCaseError`."""
    with transaction(sessions) as session:
        try:
            target = versions.switch_target(session, version_id)
        except versions.NoSuchVersion as exc:
            raise UseCaseError(Problem.NOT_FOUND, str(exc)) from None
        if target.already_active:
            return Switched(target.name, target.name)
        if target.trained and not Path(target.weights).is_file():
            raise UseCaseError(
                Problem.CONFLICT, f"{target.name} cannot be loaded: {target.weights} is missing"
            )
        previous = versions.activate_by_hand(session, target.id, verb)
    return Switched(target.name, previous)


def cancel(sessions: sessionmaker[Session], run_id: int) -> None:
    """Ask run ``run_id`` to stop. Raises :class:`UseCaseError` when there is no such run."""
    with transaction(sessions) as session:
        if runs.request_cancel(session, run_id) is None:
            raise UseCaseError(Problem.NOT_FOUND, f"no training run {run_id}")
