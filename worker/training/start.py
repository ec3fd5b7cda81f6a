"""The model a run starts from: the active model when it can be fine-tuned, else the base."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from contract.settings import Settings
from db.versions import VersionView
from worker.model import model_store, modelzoo

log = logging.getLogger(__name__)


#: What a run knows of the active version: the ledger's own view of it (one view per version).
ActiveInfo = VersionView


@dataclass
class Start:
    loaded: modelzoo.LoadedModel
    started_from: str  # in words, for the report
    pretrained: bool  # its weights were learned (ImageNet, a file, a trained version)


def start_model(
    settings: Settings, active: ActiveInfo | None, classes: list[str], fresh: bool
) -> Start:
    """The active model when it is trained, of the configured arch and knows exactly the
    labeled classes (fine-tuning); the configured base model otherwise."""
    if (
        not fresh
        and active is not None
        and active.trained
        and active.arch == settings.model
        and set(active.classes) == set(classes)
    ):
        try:
            loaded = model_store.load_version(settings.models_path, active.id)
            return Start(loaded, f"fine-tuned from {active.name}", pretrained=True)
        except Exception as exc:
            log.warning(
                "active model %s failed to load (%s): starting from the base", active.name, exc
            )
    loaded = modelzoo.build(settings.model, settings.weights)
    started_from = f"base {settings.model} (weights {settings.weights})"
    return Start(loaded, started_from, pretrained=settings.weights != "none")
