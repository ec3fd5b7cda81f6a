"""The no-model path (INFERENCE_BACKEND=null, worker.model.null_backend): everything a worker does
but
the model, through the real roles; its guard; and the plumbing benchmark's smoke run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from contract.settings import Settings
from db.engine import transaction
from db.models import Image, ModelVersion
from db.versions import ensure_base_model
from tests.helpers.faults import (
    assert_exactly_once,
    enqueue,
    roles,
    start_beat,
    start_role,
    start_worker,
    status_counts,
    unacked_hashes,
    wait_for,
)
from tests.helpers.images import write_images

ROOT = Path(__file__).resolve().parents[2]


def _null(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "inference_backend": "null",
            "reconcile_interval_s": 2.0,
            "requeue_after_s": 4.0,
            "batch_size": 8,
            "batch_wait_ms": 50,
        }
    )


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_burst_through_the_no_model_path_survives_a_worker_kill_with_each_image_once(
    settings: Settings, session_factory, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    s = _null(settings)
    total = 600
    paths = write_images(tmp_path / "files", total)
    logs = tmp_path / "logs"
    with roles() as started:
        started.append(first := start_worker(s, logs, "worker1"))
        started.append(start_beat(s, logs))
        enqueue(s, session_factory, paths)
        wait_for(lambda: status_counts(session_factory)["done"] >= 50, 60, first.tail)
        first.kill9()
        assert unacked_hashes(s.redis_url or ""), "the kill did not land mid-batch"
        assert status_counts(session_factory)["queued"] > 0, "the burst ended before the kill"
        started.append(start_worker(s, logs, "worker2"))
        wait_for(lambda: status_counts(session_factory)["done"] == total, 120, "all done")
        time.sleep(s.reconcile_interval_s + 1)  # a late duplicate delivery would land now
    assert_exactly_once(session_factory, total)
    with transaction(session_factory) as session:
        names = set(session.scalars(select(ModelVersion.name)))
        labels = set(session.scalars(select(Image.label)))
    assert names == {"base:null:null"}, "its rows name it"
    assert labels and all(label.startswith("null-") for label in labels)


def test_the_no_model_path_refuses_a_data_dir_that_has_real_model_versions(
    settings: Settings, session_factory, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    with transaction(session_factory) as session:
        ensure_base_model(session, "resnet18", "none", ["cat", "dog"])
    role = start_role(_null(settings), tmp_path / "logs", "null-worker", "worker")
    assert role.process.wait(120) == 2, role.tail()
    said = role.log.read_text(errors="replace")
    assert "real model versions" in said and "base:resnet18:none" in said, said
    with transaction(session_factory) as session:
        active = session.scalars(select(ModelVersion.name).where(ModelVersion.status == "active"))
        assert list(active) == ["base:resnet18:none"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_plumbing_benchmark_reports_every_figure_and_ends_with_json(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "bench.plumbing", "--images", "300", "--runs", "1",
            "--mixes", "60k", "--databases", "sqlite", "--work-dir", str(tmp_path / "w"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = json.loads(done.stdout.strip().splitlines()[-1])
    figures = last["sqlite"]["60k"]
    assert figures["img_per_s"] > 0 and figures["cpu_us_per_image"] > 0
    for process in ("watcher", "worker"):
        assert f"process {process}" in done.stdout
    stages = ("watcher hash", "watcher record", "watcher publish", "worker read", "worker write")
    for stage in stages:
        assert f"stage   {stage}" in done.stdout, stage
