"""The ONNX Runtime backend with real parts: real torchvision models (random init, or trained
here on generated images), real ONNX Runtime sessions and quantization, the real ledger and
BatchEngine. The export reproduces torch, the int8 model serves only when it agrees with fp32,
artifacts that were tampered with are refused, and a promotion switches sessions."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from contract.settings import Settings
from db.engine import transaction
from db.models import Image, ImageStatus, ModelVersion, RunStatus
from inbox_classifier.cli import main
from tests.helpers.images import write_images
from tests.helpers.pipeline import record, wait_until
from tests.helpers.training import COLOURS, make_labeled, training_settings, write_class
from tests.helpers.web import client as web_client
from worker.classify.batching import BatchEngine
from worker.classify.model_holder import ModelHolder
from worker.model import model_store, modelzoo, onnx_backend, serving
from worker.model.classifier import Classifier
from worker.model.preprocess import load_for_model
from worker.training.run import run_training

#: int8 confidences stay this close to fp32's (docs/architecture.md states it; measured far below).
CONFIDENCE_TOLERANCE = 0.02


def model_inputs(paths: list[Path], loaded: modelzoo.LoadedModel) -> np.ndarray:
    return np.stack([load_for_model(p.read_bytes(), loaded.preprocessing, 10**8) for p in paths])


def build(loaded: modelzoo.LoadedModel, folder: Path, images: np.ndarray, **kw: object):  # type: ignore[no-untyped-def]
    options: dict[str, object] = {
        "weights_sha256": "test",
        "built_from": "test images",
        "min_agreement": 0.99,
        "margin": 0.0,
        "threads": 2,
    }
    options.update(kw)
    return onnx_backend.build(loaded, folder, images, None, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def resnet18() -> modelzoo.LoadedModel:
    return modelzoo.build("resnet18", "none")


def test_the_export_reproduces_torch_on_other_images_and_batch_sizes(
    tmp_path: Path, resnet18: modelzoo.LoadedModel
) -> None:
    images = model_inputs(write_images(tmp_path / "in", 40), resnet18)
    manifest = build(resnet18, tmp_path / "v", images[:8])
    assert manifest.fp32.max_abs_diff <= onnx_backend.EXPORT_TOLERANCE
    runner = onnx_backend.OrtRunner(
        onnx_backend.serving_dir(tmp_path / "v") / onnx_backend.FP32_FILE, "fp32", 2
    )
    reference = onnx_backend.torch_logits(resnet18, images)
    for size in (1, 7, 32):  # the batch axis is dynamic
        got = runner.logits(images[:size])
        assert got.shape == (size, 1000)
        assert np.abs(got - reference[:size]).max() <= onnx_backend.EXPORT_TOLERANCE
    # Too few images to check int8 against: fp32 only, and the manifest says why.
    assert manifest.int8 is None and "only 4 image(s)" in (manifest.int8_reason or "")


def test_every_convolution_has_its_weights_as_initializers_so_int8_can_fuse_them(
    resnet18: modelzoo.LoadedModel,
) -> None:
    # A fresh resnet18's zero biases are shared through Identity nodes by the exporter; left
    # so, the quantizer keeps those layers in fp32 and int8 ran slower than fp32.
    import onnx

    graph = onnx.load_from_string(onnx_backend.export_bytes(resnet18)).graph
    initializers = {t.name for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == 20
    assert all(name in initializers for n in convs for name in n.input[1:])


def test_int8_that_fails_its_agreement_check_is_not_built_and_fp32_serves(
    tmp_path: Path, resnet18: modelzoo.LoadedModel, settings: Settings, session_factory
) -> None:
    images = model_inputs(
        write_images(tmp_path / "in", 2 * onnx_backend.MIN_CHECK_IMAGES), resnet18
    )
    folder = tmp_path / "v"
    manifest = build(resnet18, folder, images, min_agreement=1.01)  # no model can pass
    assert manifest.int8 is None
    assert manifest.int8_check is not None and manifest.int8_check.passed is False
    assert "INT8_MIN_AGREEMENT 1.01" in (manifest.int8_reason or "")
    assert not (onnx_backend.serving_dir(folder) / onnx_backend.INT8_FILE).exists()

    classifier = Classifier(1, resnet18, torch_device(), None)
    forced = settings.model_copy(update={"inference_backend": "onnxruntime"})
    serving.Serving(forced, session_factory).attach(classifier, folder, "test")
    assert classifier.backend == "onnxruntime fp32"


def test_a_version_without_artifacts_serves_an_export_made_at_start_until_they_are_built(
    tmp_path: Path,
    resnet18: modelzoo.LoadedModel,
    settings: Settings,
    session_factory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    images = model_inputs(write_images(tmp_path / "in", 8), resnet18)
    reference = Classifier(1, resnet18, torch_device(), None).score(images, topk=3)
    chooser = serving.Serving(settings, session_factory)
    classifier = Classifier(1, resnet18, torch_device(), None)
    with caplog.at_level(logging.INFO, logger="worker.model.serving"):
        chooser.attach(classifier, tmp_path / "v", "test")  # no artifacts: sampled, built later
        assert classifier.sampler is not None
        wait_until(lambda: classifier.runner is not None, 120, "the interim export")
    assert classifier.backend == "onnxruntime fp32"
    assert "classifies with onnxruntime fp32 (exported at start" in caplog.text
    got = classifier.score(images, topk=3)
    assert [g.topk[0]["label"] for g in got] == [r.topk[0]["label"] for r in reference]
    assert max(
        abs(g.topk[0]["confidence"] - r.topk[0]["confidence"])
        for g, r in zip(got, reference, strict=True)
    ) < 1e-4

    # The artifacts built from its first images replace it; an export finishing late does not
    # come back over them.
    folder = tmp_path / "built"
    chooser._serve(classifier, folder, build(resnet18, folder, images))
    final = classifier.runner
    chooser._serve_interim(classifier)
    assert classifier.runner is final

    # Where torch's bf16 was measured faster than ONNX Runtime's fp32, no export is made.
    monkeypatch.setattr(serving, "native_bf16", lambda _device: True)
    exports: list[object] = []
    monkeypatch.setattr(onnx_backend, "interim_runner", lambda *args: exports.append(args))
    bf16 = Classifier(2, resnet18, torch_device(), torch.bfloat16)
    chooser.attach(bf16, tmp_path / "v2", "test")
    for thread in threading.enumerate():
        if thread.name.startswith("serving-interim-2"):
            thread.join()
    assert exports == [] and bf16.runner is None and bf16.backend == "torch bf16"


def test_artifacts_tampered_with_or_for_other_weights_are_refused_and_torch_serves(
    tmp_path: Path,
    resnet18: modelzoo.LoadedModel,
    settings: Settings,
    session_factory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    images = model_inputs(write_images(tmp_path / "in", 8), resnet18)
    folder = tmp_path / "v"
    build(resnet18, folder, images)
    onnx_file = onnx_backend.serving_dir(folder) / onnx_backend.FP32_FILE
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(onnx_backend.ArtifactRefused, match="differs from the sha256"):
        onnx_backend.load_manifest(folder)

    chooser = serving.Serving(settings, session_factory)
    with caplog.at_level(logging.INFO, logger="worker.model.serving"):
        for _ in range(2):  # a second load of the same version does not log it again
            classifier = Classifier(1, resnet18, torch_device(), None)
            chooser.attach(classifier, folder, "test")
            assert classifier.runner is None and classifier.backend.startswith("torch")
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.ERROR
    assert "tampered" in refusals[0].getMessage()

    rebuilt = tmp_path / "w"
    build(resnet18, rebuilt, images)
    classifier = Classifier(1, resnet18, torch_device(), None)
    chooser.attach(classifier, rebuilt, "other weights")
    assert classifier.runner is None


def test_auto_without_onnxruntime_serves_with_torch_and_says_why(
    tmp_path: Path,
    resnet18: modelzoo.LoadedModel,
    settings: Settings,
    session_factory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(onnx_backend, "unavailable", lambda: "onnxruntime is not installed")
    classifier = Classifier(1, resnet18, torch_device(), None)
    with caplog.at_level(logging.INFO, logger="worker.model.serving"):
        serving.Serving(settings, session_factory).attach(classifier, tmp_path, "test")
    assert classifier.runner is None and classifier.sampler is None
    assert any(
        "classifies with torch" in r.getMessage() and "not installed" in r.getMessage()
        for r in caplog.records
    )


def test_auto_prefers_torch_bf16_to_onnxruntime_fp32_only_where_bf16_was_chosen(
    tmp_path: Path,
    resnet18: modelzoo.LoadedModel,
    settings: Settings,
    session_factory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "v"
    build(resnet18, folder, model_inputs(write_images(tmp_path / "in", 8), resnet18))
    # bf16 is chosen only where the precision probe measured it faster
    # (worker.model.precision_probe)
    monkeypatch.setattr(serving, "native_bf16", lambda _device: True)
    for autocast, expected in ((torch.bfloat16, "torch"), (None, "onnxruntime fp32")):
        classifier = Classifier(1, resnet18, torch_device(), autocast)
        serving.Serving(settings, session_factory).attach(classifier, folder, "test")
        assert classifier.backend.startswith(expected)


# --- trained on real images, through the training run and the engine ----------------------------


def test_a_trained_version_serves_at_int8_with_the_same_answers_and_a_promotion_switches(
    settings: Settings,
    session_factory: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A base model with no artifacts: served by an export made at start until its first images
    # are sampled, then by ONNX Runtime's artifacts, built in the background from that sample.
    monkeypatch.setattr(onnx_backend, "SAMPLE_IMAGES", 2 * onnx_backend.MIN_CHECK_IMAGES)
    s = training_settings(
        settings,
        inference_backend="onnxruntime",
        inference_streams=2,
        model_check_interval_s=0.2,
        val_fraction=0.3,
    )
    holder = ModelHolder(s, session_factory)
    engine = BatchEngine(s, holder, session_factory)
    try:
        inbox = write_images(s.inbox, onnx_backend.SAMPLE_IMAGES)
        engine.submit(record(session_factory, inbox)).result(timeout=300)
        base = holder.current()
        # (an export made at start serves meanwhile, from memory: no path)
        wait_until(lambda: getattr(base.runner, "path", None), 300, "the base model's ONNX build")
        assert base.backend.startswith("onnxruntime")
        folder = model_store.version_dir(s.models_path, base.version_id)
        assert json.loads((folder / "serving" / "serving.json").read_text())["built_from"] == (
            f"the first {onnx_backend.SAMPLE_IMAGES} images this version classified"
        )

        # Train on real images; the run builds int8 from the validation split and checks it.
        make_labeled(s.labeled_path, per_class=80)
        outcome = run_training(s, session_factory)
        assert outcome.status == RunStatus.PROMOTED, outcome.message
        trained = model_store.version_dir(s.models_path, outcome.version_id)
        manifest = onnx_backend.load_manifest(trained)
        assert manifest is not None and manifest.int8 is not None, manifest
        check = manifest.int8_check
        assert check is not None
        assert check.passed and check.agreement >= s.int8_min_agreement
        assert check.int8_accuracy is not None and check.fp32_accuracy is not None
        assert check.int8_accuracy >= check.fp32_accuracy - s.gate_margin
        assert check.max_confidence_diff <= CONFIDENCE_TOLERANCE
        with transaction(session_factory) as session:
            recorded = session.get(ModelVersion, outcome.version_id)
            assert recorded is not None and recorded.serving["precision"] == "int8"

        # New files: the engine switches to the promoted version, served at int8.
        fresh = []
        for i, name in enumerate(COLOURS):
            fresh += write_class(s.inbox / "new" / name, COLOURS[name], 8, seed=7 + i)
        engine.submit(record(session_factory, fresh)).result(timeout=120)
        current = holder.current()
        assert current.version_id == outcome.version_id
        assert current.backend == "onnxruntime int8"

        # Same answers as torch fp32 on those files, confidences within the tolerance.
        with transaction(session_factory) as session:
            rows = {
                r.sha256: r
                for r in session.scalars(select(Image).where(Image.status == ImageStatus.DONE))
            }
        reference = Classifier(
            outcome.version_id,
            model_store.load_version(s.models_path, outcome.version_id),
            torch_device(),
            None,
        )
        expected = reference.score(model_inputs(fresh, reference.loaded), topk=1)
        for path, want in zip(fresh, expected, strict=True):
            row = rows[hashlib.sha256(path.read_bytes()).hexdigest()]
            assert row.label == want.topk[0]["label"]
            assert abs(row.confidence - want.topk[0]["confidence"]) <= CONFIDENCE_TOLERANCE
            assert row.model_version_id == outcome.version_id

        result = CliRunner().invoke(main, ["models", "--long", "--database-url", s.db_url])
        assert result.exit_code == 0, result.output
        assert "serving: onnxruntime int8 (top-1 agreement with fp32" in result.output
        status = CliRunner().invoke(main, ["status", "--database-url", s.db_url])
        assert status.exit_code == 0, status.output
        assert "serving:  onnxruntime int8 (top-1 agreement with fp32" in status.output
        with web_client(s) as web:
            api = web.get(f"/api/models/{outcome.version_id}").json()
            assert api["serving"]["serves"] == "onnxruntime int8"
            page = web.get(f"/models?version={outcome.version_id}").text
            assert "onnxruntime int8 (top-1 agreement with fp32" in page
    finally:
        engine.stop()


def torch_device():  # type: ignore[no-untyped-def]
    import torch

    return torch.device("cpu")


def test_a_runner_that_fails_on_a_batch_hands_over_to_torch_for_good(
    tmp_path: Path, resnet18: modelzoo.LoadedModel, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        precision = "int8"

        def logits(self, batch: np.ndarray) -> np.ndarray:
            raise RuntimeError("session died")

    images = model_inputs(write_images(tmp_path / "in", 3), resnet18)
    reference = Classifier(1, resnet18, torch_device(), None).score(images, topk=3)
    classifier = Classifier(1, resnet18, torch_device(), None)
    classifier.use_runner(Broken())
    with caplog.at_level(logging.ERROR, logger="worker.model.classifier"):
        got = classifier.score(images, topk=3)
    assert [g.topk for g in got] == [r.topk for r in reference]
    assert classifier.runner is None and classifier.backend == "torch fp32"
    assert "onnxruntime int8 failed on a batch" in caplog.text
