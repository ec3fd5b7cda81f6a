"""Batched device decode (``GPU_DECODE``, worker.classify.batch_decode) on the CPU, where
torchvision
decodes with the same call it makes on a GPU: EXIF orientation for all 8 tags, the resize and
crop against the Pillow path within the stated tolerance, the fallback of every non-JPEG kind
inside one batch of the real BatchEngine, and the bad-input corpus through this path. The
CUDA cases at the end run only where CUDA is, and are skipped here."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from bench.images import encode, photo_like
from contract.settings import Settings
from db.engine import transaction
from db.models import Image as ImageRow
from db.models import ImagePath
from imaging.decode import BadImage
from tests.helpers.corpus import CONTENT_CASES, DONE, LIMIT
from tests.helpers.pipeline import record
from worker.classify.batch_decode import (
    assemble,
    decode_batch,
    decode_files,
    device_decode_wanted,
    orient,
    prepare,
    probe,
)
from worker.classify.batching import BatchEngine
from worker.classify.model_holder import ModelHolder
from worker.model.preprocess import Preprocessing, load_for_model

CPU = torch.device("cpu")
PREP = Preprocessing()
# The stated tolerance against the Pillow path (docs/architecture.md, "GPU workers"), in
# levels of 255:
# Pillow decodes a large JPEG scaled down in the DCT, this path at full size.
MEAN_TOLERANCE = 3.0  # photo-like images, ordinary sizes
ODD_MEAN_TOLERANCE = 6.0  # sizes whose centre crop starts half a pixel in (e.g. 257x256)


def device_path(data: bytes, device: torch.device = CPU) -> np.ndarray:
    """One file through the path the engine takes: probe, device decode, else Pillow."""
    (row,) = assemble([prepare(data, PREP, LIMIT)], PREP, device, LIMIT)
    if isinstance(row, Exception):
        raise row
    return row.cpu().numpy() if isinstance(row, torch.Tensor) else row


def quadrants(size: tuple[int, int]) -> Image.Image:
    """Four flat colours: any wrong flip or turn moves them."""
    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[: height // 2, : width // 2] = (230, 30, 30)
    pixels[: height // 2, width // 2 :] = (30, 230, 30)
    pixels[height // 2 :, : width // 2] = (30, 30, 230)
    pixels[height // 2 :, width // 2 :] = (230, 230, 30)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("tag", range(1, 9))
def test_each_exif_orientation_matches_pillow(tag: int) -> None:
    data = encode(quadrants((400, 240)), "JPEG", orientation=tag)
    encoded = probe(data, LIMIT)
    assert encoded is not None and encoded.orientation == tag
    # The mapping itself, at full size, against Pillow's exif_transpose of the same pixels.
    from torchvision.io import decode_jpeg

    chw = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    ours = orient(chw, tag).permute(1, 2, 0).numpy().astype(int)
    exif = Image.Exif()
    exif[0x0112] = tag
    lossless = _encoded(Image.fromarray(chw.permute(1, 2, 0).numpy()), "PNG", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(lossless)))).astype(int)
    assert ours.shape == expected.shape and (ours == expected).all()
    # And model-sized, against the Pillow path the CPU worker takes.
    got = device_path(data).astype(int)
    pillow = load_for_model(data, PREP, LIMIT).astype(int)
    assert np.abs(got - pillow).mean() < MEAN_TOLERANCE


@pytest.mark.parametrize(
    ("size", "tolerance"),
    [
        ((640, 480), MEAN_TOLERANCE),
        ((480, 640), MEAN_TOLERANCE),
        ((1920, 1080), MEAN_TOLERANCE),
        ((4000, 3000), MEAN_TOLERANCE),
        ((300, 300), MEAN_TOLERANCE),
        ((224, 100), MEAN_TOLERANCE),  # smaller than the crop: padded
        ((2000, 60), MEAN_TOLERANCE),  # a strip: padded top and bottom
        ((257, 256), ODD_MEAN_TOLERANCE),
    ],
)
def test_resize_and_crop_match_the_pillow_path_within_tolerance(
    size: tuple[int, int], tolerance: float
) -> None:
    for orientation in (1, 6):
        data = encode(photo_like(size[0] + orientation, size), "JPEG", orientation=orientation)
        got = device_path(data)
        assert got.shape == (224, 224, 3) and got.dtype == np.uint8
        difference = np.abs(got.astype(int) - load_for_model(data, PREP, LIMIT).astype(int))
        assert difference.mean() < tolerance, (size, orientation, difference.mean())
    # A different image is far outside it: the tolerance can tell images apart.
    other = load_for_model(encode(photo_like(999, size), "JPEG"), PREP, LIMIT).astype(int)
    assert np.abs(got.astype(int) - other).mean() > 3 * tolerance


def test_one_call_decodes_a_mixed_batch_in_order() -> None:
    datas = [
        encode(photo_like(i, size), "JPEG")
        for i, size in enumerate([(640, 480), (640, 480), (320, 500), (640, 480), (1000, 200)])
    ]
    encoded = [probe(d, LIMIT) for d in datas]
    assert all(e is not None for e in encoded)
    out = decode_batch(encoded, PREP, CPU)  # type: ignore[arg-type]
    for data, tensor in zip(datas, out, strict=True):
        assert tensor is not None
        pillow = load_for_model(data, PREP, LIMIT).astype(int)
        assert np.abs(tensor.numpy().astype(int) - pillow).mean() < MEAN_TOLERANCE


def _refused_by_the_device_decoder() -> bytes:
    """A JPEG whose header and end marker are fine, with a run of 0xFF in its entropy-coded
    data: torchvision's decoder refuses it, Pillow decodes it (with a warning). Which damage
    does this depends on the decoders, so the premise is checked here."""
    data = bytearray(encode(photo_like(1, (320, 240)), "JPEG"))
    start = data.index(b"\xff\xda") + 20
    data[start : start + 40] = b"\xff" * 40
    assert decode_files([bytes(data)], CPU) == [None], "premise: the device decoder refuses it"
    load_for_model(bytes(data), PREP, LIMIT)  # premise: Pillow decodes it
    return bytes(data)


def _undecodable_jpeg() -> bytes:
    """Lossless-JPEG marker on baseline data: neither decoder can read it."""
    data = bytearray(encode(photo_like(6, (320, 240)), "JPEG"))
    data[data.index(b"\xff\xc0") + 1] = 0xC3
    return bytes(data)


def _encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def test_the_probe_sends_what_nvjpeg_cannot_take_to_pillow() -> None:
    photo = photo_like(1, (200, 150))
    assert probe(_encoded(photo, "JPEG"), LIMIT) is not None
    assert probe(_encoded(photo.convert("L"), "JPEG"), LIMIT) is not None
    assert probe(_encoded(photo, "JPEG", progressive=True), LIMIT) is not None
    for fmt, image in [
        ("PNG", photo),
        ("WEBP", photo),
        ("GIF", photo),
        ("TIFF", photo),
        ("JPEG", photo.convert("CMYK")),
    ]:
        assert probe(_encoded(image, fmt), LIMIT) is None, fmt
    jpeg = _encoded(photo, "JPEG")
    assert probe(jpeg[: len(jpeg) // 2], LIMIT) is None  # truncated: Pillow says so
    assert probe(jpeg, max_pixels=100) is None  # over the limit: Pillow refuses it


@pytest.mark.parametrize("case", CONTENT_CASES, ids=[c.rel for c in CONTENT_CASES])
def test_bad_input_corpus_through_the_device_path(case) -> None:  # type: ignore[no-untyped-def]
    data = case.content(1)
    if case.expect == DONE:
        array = device_path(data)
        assert array.shape == (224, 224, 3) and array.dtype == np.uint8
    else:
        with pytest.raises(BadImage, match=case.reason):
            device_path(data)


def test_gpu_decode_modes() -> None:
    assert device_decode_wanted("on", "cpu")
    assert not device_decode_wanted("off", "cuda")
    assert not device_decode_wanted("auto", "cpu")
    assert device_decode_wanted("auto", "cuda")


# --- the real engine: one batch, every kind ------------------------------------------------------


@pytest.fixture
def engine(settings: Settings, session_factory: sessionmaker[Session]) -> Iterator[BatchEngine]:
    on = settings.model_copy(
        update={
            "gpu_decode": "on",
            "batch_size": 32,
            "batch_wait_ms": 2_000,
            "inference_streams": 1,
        }
    )
    made = BatchEngine(on, ModelHolder(on, session_factory), session_factory)
    yield made
    made.stop()


def _outcomes(session_factory: sessionmaker[Session]) -> dict[str, tuple[str, str | None]]:
    with transaction(session_factory) as session:
        rows = session.execute(
            select(ImagePath.path, ImageRow.status, ImageRow.error).join(
                ImageRow, ImagePath.image_id == ImageRow.id
            )
        ).all()
    return {Path(path).name: (status, error) for path, status, error in rows}


def test_every_kind_falls_back_alone_inside_one_device_batch(
    settings: Settings, session_factory: sessionmaker[Session], engine: BatchEngine
) -> None:
    photo = photo_like(3, (320, 240))
    files = {
        "a.jpg": encode(photo_like(1, (640, 480)), "JPEG"),
        "b.jpg": encode(photo_like(2, (480, 640)), "JPEG", orientation=6),
        "png.png": _encoded(photo, "PNG"),
        "webp.webp": _encoded(photo, "WEBP"),
        "gif.gif": _encoded(photo, "GIF"),
        "tiff.tif": _encoded(photo, "TIFF"),
        "cmyk.jpg": _encoded(photo.convert("CMYK"), "JPEG"),
        "refused.jpg": _refused_by_the_device_decoder(),
        "truncated.jpg": _encoded(photo, "JPEG")[:3000],
        "undecodable.jpg": _undecodable_jpeg(),
    }
    paths = []
    for name, data in files.items():
        path = settings.inbox / name
        path.write_bytes(data)
        paths.append(path)
    engine.submit(record(session_factory, paths)).result(timeout=180)
    assert engine.last_stats is None or engine.last_stats.batches >= 1
    outcomes = _outcomes(session_factory)
    failed = {name for name, (status, _) in outcomes.items() if status == "failed"}
    assert failed == {"truncated.jpg", "undecodable.jpg"}, outcomes
    assert "truncated" in (outcomes["truncated.jpg"][1] or "")
    assert "corrupt" in (outcomes["undecodable.jpg"][1] or "")
    assert all(status == "done" for name, (status, _) in outcomes.items() if name not in failed)
    assert engine.device_decode  # a refused file is a fallback, not a broken decoder


def test_the_device_path_gives_the_labels_the_pillow_path_gives(
    settings: Settings, session_factory: sessionmaker[Session], engine: BatchEngine
) -> None:
    from worker.model.classifier import Classifier

    holder = ModelHolder(settings, session_factory)
    classifier: Classifier = holder.current()
    datas = [encode(photo_like(40 + i, (640, 480)), "JPEG") for i in range(8)]
    pillow = np.stack([load_for_model(d, PREP, LIMIT) for d in datas])
    device = torch.stack([torch.from_numpy(device_path(d)) for d in datas])
    a = classifier.score(pillow, 3)
    b = classifier.score(device, 3)
    for x, y in zip(a, b, strict=True):
        assert abs(x.topk[0]["confidence"] - y.topk[0]["confidence"]) < 0.05


# --- on a GPU ------------------------------------------------------------------------------------

def cuda(test):  # type: ignore[no-untyped-def]
    """Marked ``cuda`` (``-m cuda`` selects them) and skipped where CUDA is not."""
    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    return pytest.mark.cuda(skip(test))


@cuda
def test_nvjpeg_matches_the_cpu_decode_of_the_same_call() -> None:
    gpu = torch.device("cuda")
    datas = [encode(photo_like(i, (1280, 960)), "JPEG", orientation=1 + i % 8) for i in range(16)]
    encoded = [probe(d, LIMIT) for d in datas]
    on_gpu = decode_batch(encoded, PREP, gpu)  # type: ignore[arg-type]
    on_cpu = decode_batch(encoded, PREP, CPU)  # type: ignore[arg-type]
    for g, c in zip(on_gpu, on_cpu, strict=True):
        assert g is not None and c is not None and g.device.type == "cuda"
        assert (g.cpu().int() - c.int()).abs().float().mean() < 2.0


@cuda
def test_a_gpu_engine_decodes_on_the_gpu_and_falls_back_per_file(
    settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    on = settings.model_copy(update={"device": "cuda", "gpu_decode": "auto", "batch_size": 64})
    made = BatchEngine(on, ModelHolder(on, session_factory), session_factory)
    try:
        assert made.device_decode
        paths = []
        for i in range(48):
            path = on.inbox / f"{i}.jpg"
            path.write_bytes(encode(photo_like(i, (800, 600)), "JPEG", orientation=1 + i % 8))
            paths.append(path)
        (on.inbox / "p.png").write_bytes(_encoded(photo_like(99, (300, 200)), "PNG"))
        (on.inbox / "bad.jpg").write_bytes(_undecodable_jpeg())
        paths += [on.inbox / "p.png", on.inbox / "bad.jpg"]
        made.submit(record(session_factory, paths)).result(timeout=300)
        outcomes = _outcomes(session_factory)
        assert {n for n, (s, _) in outcomes.items() if s == "failed"} == {"bad.jpg"}
        assert made.last_stats is None or made.last_stats.device_decode_s >= 0
    finally:
        made.stop()


def test_a_broken_device_decoder_hands_over_to_pillow_for_good(
    settings: Settings,
    session_factory: sessionmaker[Session],
    engine: BatchEngine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from worker.classify import batch_decode

    calls = []

    def broken(*args: object) -> list[torch.Tensor | None]:
        calls.append(args)
        raise RuntimeError("nvjpeg: no decoder on this device")  # a stand-in: no GPU here

    monkeypatch.setattr(batch_decode, "decode_batch", broken)
    paths = []
    for i in range(6):
        path = settings.inbox / f"{i}.jpg"
        path.write_bytes(encode(photo_like(70 + i, (320, 240)), "JPEG"))
        paths.append(path)
    engine.submit(record(session_factory, paths[:3])).result(timeout=180)
    engine.submit(record(session_factory, paths[3:])).result(timeout=60)
    outcomes = _outcomes(session_factory)
    assert {status for status, _ in outcomes.values()} == {"done"} and len(outcomes) == 6
    assert not engine.device_decode and len(calls) == 1  # tried once, then Pillow for good
    assert sum("decoding with Pillow from now on" in r.message for r in caplog.records) == 1
