"""Security checks on real parts: no pickle on the queue (a pickled message sent to a real worker
is refused, not executed), model files load with weights_only (a tampered model.pt is refused
and workers keep their model), class folder names cannot escape, CLI filters are bound
parameters, and the compose file publishes nothing beyond loopback.

Threat model (docs/operations.md, "Security"): whoever can write to the inbox can make us
*read* any file
they could name (we never follow links out of the inbox and never execute content); Redis and
the database are trusted infrastructure, but a message or a model file that did get tampered
with must not run code in a worker.
"""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import pytest
import torch
from celery import Celery
from click.testing import CliRunner
from sqlalchemy import select

from broker.app import make_celery
from contract.queues import TASK_CLASSIFY
from contract.records import Classified
from contract.settings import Settings
from db.batch_write import save_results
from db.engine import transaction
from db.models import ModelStatus, ModelVersion
from db.versions import activate, base_model_name, ensure_base_model
from inbox_classifier.cli import main
from tests.helpers.faults import enqueue, roles, start_worker, status_counts, wait_for
from tests.helpers.images import write_image, write_images
from tests.helpers.pipeline import record
from worker.model import model_store, modelzoo

pytestmark = pytest.mark.timeout(180)


class Planted:
    """Unpickling this creates ``marker`` (a harmless stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


# --- the queue: JSON only ------------------------------------------------------------------------


def test_celery_accepts_and_sends_json_only(settings: Settings) -> None:
    conf = make_celery(settings).conf
    assert conf.accept_content == ["json"]
    assert conf.task_serializer == "json"
    assert conf.result_serializer == "json"
    assert conf.event_serializer == "json"
    assert "pickle" not in (conf.result_accept_content or [])


@pytest.mark.slow
def test_a_pickled_message_is_refused_not_executed_and_the_worker_goes_on(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    attacker = Celery("attacker", broker=settings.redis_url, set_as_current=False)
    attacker.conf.update(task_serializer="pickle", accept_content=["pickle", "json"])
    logs = tmp_path / "logs"
    with roles() as started:
        started.append(worker := start_worker(settings, logs))
        attacker.send_task(TASK_CLASSIFY, args=[Planted(marker)], queue="classify",
                           serializer="pickle")
        attacker.close()
        # A good message behind it is still classified: the worker did not die on it.
        enqueue(settings, session_factory, write_images(tmp_path / "files", 3))
        wait_for(lambda: status_counts(session_factory)["done"] == 3, 60,
                 lambda: "3 done\n" + worker.tail())
        assert worker.alive()
        log = worker.log.read_text(errors="replace")
    assert not marker.exists(), "a pickled message was deserialised by the worker"
    assert "untrusted content" in log.lower() or "refusing" in log.lower(), log[-3000:]


# --- model files: weights_only --------------------------------------------------------------------


def _tampered(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        torch.save({"format": 1, "arch": "resnet18", "evil": Planted(marker)}, handle)
    return path


def test_a_tampered_model_file_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _tampered(tmp_path / "models" / "7" / model_store.MODEL_FILE, marker)
    with pytest.raises(modelzoo.ModelError, match="not a safe weights file"):
        modelzoo.load_file(path, "resnet18")
    with pytest.raises(modelzoo.ModelError, match="not a safe weights file"):
        model_store.load_version(tmp_path / "models", 7)
    # A plain pickle (not even a torch file) named model.pt: refused as well.
    path.write_bytes(pickle.dumps(Planted(marker)))
    with pytest.raises(modelzoo.ModelError):
        modelzoo.load_file(path, "resnet18")
    assert not marker.exists()


def _register_trained(sessions, settings: Settings, marker: Path) -> int:  # type: ignore[no-untyped-def]
    """A 'trained' version row whose model.pt was tampered with, made active."""
    with transaction(sessions) as session:
        row = ModelVersion(name="v-evil", arch="resnet18", weights="", classes=["a", "b"],
                           status=ModelStatus.CANDIDATE.value, trained=True)
        session.add(row)
        session.flush()
        _tampered(model_store.version_dir(settings.models_path, row.id)
                  / model_store.MODEL_FILE, marker)
        activate(session, row)
        return row.id


def test_a_running_worker_stays_on_its_model_when_the_new_one_is_tampered(
    settings: Settings, session_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.classify.model_holder import ModelHolder

    s = settings.model_copy(update={"model_check_interval_s": 0.1})
    holder = ModelHolder(s, session_factory)
    before = holder.current().version_id
    marker = tmp_path / "pwned"
    evil = _register_trained(session_factory, s, marker)
    calls = []
    real = model_store.load_file
    monkeypatch.setattr(model_store, "load_file",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    for _ in range(5):  # several model checks: the refused file is not re-read every time
        time.sleep(0.12)
        assert holder.current().version_id == before != evil
    assert len(calls) == 1
    assert not marker.exists()


def test_a_worker_starting_on_a_tampered_active_model_uses_and_records_the_base(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    """The fallback classifies with the base model, so its results must be recorded under the
    base model's version, not under the refused one."""
    from worker.classify.model_holder import ModelHolder

    marker = tmp_path / "pwned"
    with transaction(session_factory) as session:
        ensure_base_model(session, "resnet18", "none", modelzoo.imagenet_categories("resnet18"))
    evil = _register_trained(session_factory, settings, marker)
    holder = ModelHolder(settings, session_factory)
    current = holder.current()
    with transaction(session_factory) as session:
        base = session.scalars(select(ModelVersion).where(
            ModelVersion.name == base_model_name("resnet18", "none"))).one()
        assert current.version_id == base.id != evil
        assert len(current.classes) == 1000
    assert not marker.exists()


# --- class folder names ---------------------------------------------------------------------------


def test_class_folder_names_cannot_reach_outside_labeled_or_models(
    settings: Settings, session_factory
) -> None:
    """Names that could become paths (separators, '..', control characters, hidden) are
    refused before any training; the model is written under models/<integer id>/ only."""
    from tests.helpers.training import make_labeled, training_settings
    from worker.training.run import run_training

    s = training_settings(settings)
    make_labeled(s.labeled_path, per_class=8)
    # Folder names starting with "." are hidden and ignored; these are refused outright.
    evil = s.labeled_path / "escape\n..\n..\nx"
    evil.mkdir()
    for n in range(6):  # images of its own: one in two classes would not train (dataset.py)
        write_image(evil / f"evil_{n}.png", 900 + n)
    out = run_training(s, session_factory)
    assert out.status == "failed" and "unsafe class folder name" in out.message, out.message
    assert not s.models_path.exists() or not any(s.models_path.iterdir())

    evil.rename(s.labeled_path / "green-too")  # a fine name now: trains and saves
    out = run_training(s, session_factory)
    assert out.status == "promoted", out.message
    saved = [p for p in s.models_path.iterdir()]
    assert [p.name for p in saved] == [str(out.version_id)]
    with transaction(session_factory) as session:
        row = session.get(ModelVersion, out.version_id)
        assert row is not None
        assert Path(row.weights).resolve().parent == (s.models_path / str(row.id)).resolve()


# --- the CLI: bound parameters --------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--label", "x' OR 1=1 --"),
        ("--label", "x\"; DROP TABLE images; --"),
        ("--path-glob", "%' OR '1'='1"),
        ("--path-glob", "*'); DELETE FROM images; --"),
    ],
)
def test_cli_filters_are_bound_parameters(
    settings: Settings, session_factory, flag: str, value: str
) -> None:
    items = record(session_factory, write_images(settings.inbox, 2))
    with transaction(session_factory) as session:
        base = ensure_base_model(session, "resnet18", "none", ["x"])
        save_results(session, base.id,
                     [Classified(i.sha256, "x", 0.9, [{"label": "x", "confidence": 0.9}])
                      for i in items])
    result = CliRunner().invoke(
        main, ["results", "--format", "json", flag, value, "--database-url", settings.db_url],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []
    assert status_counts(session_factory)["done"] == 2  # nothing dropped or deleted


# --- the deployment
# Redis and PostgreSQL publish no port beyond loopback, Redis requires a password, and every
# password comes from the environment: tests/project/test_compose.py
# (test_backing_services_are_not_reachable_from_outside, test_redis, test_postgres,
# test_passwords_come_only_from_the_environment, test_compose_refuses_to_start_without_passwords).
