"""The model a run starts from: the active model when it can be fine-tuned, else the base."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from contract.settings import Settings
from db.models import ModelVersion
from worker import model_store, modelzoo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActiveInfo:
    """What a run needs to know of the active version, read once at its start."""

    id: int
    name: str
    arch: str
    classes: list[str]
    trained: bool
    manifest_sha256: str | None

    @classmethod
    def of(cls, row: ModelVersion) -> ActiveInfo:
        return cls(
            row.id,
            row.name,
            row.arch,
            [str(c) for c in row.classes],
            row.trained,
            row.manifest_sha256,
        )


def start_model(
    settings: Settings, active: ActiveInfo | None, classes: list[str], fresh: bool
) -> tuple[modelzoo.LoadedModel, str]:
    """The active model when it is trained, of the configured arch and knows exactly the
    labeled classes (fine-tuning); the configured base model otherwise. Returns the model and
    where it started from, in words."""
    if (
        not fresh
        and active is not None
        and active.trained
        and active.arch == settings.model
        and set(active.classes) == set(classes)
    ):
        try:
            loaded = model_store.load_version(settings.models_path, active.id)
            return loaded, f"fine-tuned from {active.name}"
        except Exception as exc:
            log.warning(
                "active model %s failed to load (%s): starting from the base", active.name, exc
            )
    loaded = modelzoo.build(settings.model, settings.weights)
    return loaded, f"base {settings.model} (weights {settings.weights})"
