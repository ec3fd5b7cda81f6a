"""``--device cuda``: a second ceiling that decodes JPEGs on the GPU (nvjpeg through
``torchvision.io.decode_jpeg(device="cuda")``), resizes and crops there, and feeds the model
without the batch ever visiting host memory. Other formats (PNG...) take the worker's CPU path.

NOT RUN in the session that wrote it (no GPU there). The EXIF orientation logic is shared with
the CPU and is checked against Pillow on the CPU (``python -m bench.gpu --self-check``); the
CUDA calls follow torchvision 0.29's documented API. Treat the first GPU results with care.
"""

from __future__ import annotations

import io
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.ceiling import MAX_PIXELS, CeilingResult, warm_up
from imaging.decode import BadImage
from worker.classifier import Classifier
from worker.preprocess import Preprocessing, load_for_model

JPEG_MAGIC = b"\xff\xd8"


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1..8) from the header alone; 1 when absent or unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            value = image.getexif().get(0x0112, 1)
    except Exception:
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def orient(chw: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to a CHW tensor on any device, as PIL's exif_transpose does."""
    h, w = 1, 2
    match orientation:
        case 2:
            return chw.flip(w)
        case 3:
            return chw.flip(h, w)
        case 4:
            return chw.flip(h)
        case 5:
            return chw.transpose(h, w)
        case 6:
            return torch.rot90(chw, k=-1, dims=(h, w))
        case 7:
            return chw.transpose(h, w).flip(h, w)
        case 8:
            return torch.rot90(chw, k=1, dims=(h, w))
    return chw


def resize_crop_tensor(chw: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """Shorter side to ``prep.resize`` (bilinear, antialiased), centre crop ``prep.crop``;
    returns uint8 HWC on the same device."""
    from torchvision.transforms.v2 import functional as F

    resized = F.resize(chw, [prep.resize], antialias=True)
    cropped = F.center_crop(resized, [prep.crop, prep.crop])
    return cropped.permute(1, 2, 0)


def gpu_decode_batch(
    datas: Sequence[bytes], prep: Preprocessing, device: torch.device
) -> torch.Tensor:
    """uint8 NHWC batch on ``device``: JPEGs decoded by nvjpeg in one call, others on the CPU."""
    from torchvision.io import ImageReadMode, decode_jpeg

    jpeg_idx = [i for i, d in enumerate(datas) if d[:2] == JPEG_MAGIC]
    out: list[torch.Tensor | None] = [None] * len(datas)
    if jpeg_idx:
        inputs = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in jpeg_idx]
        decoded = decode_jpeg(inputs, mode=ImageReadMode.RGB, device=device)
        for i, chw in zip(jpeg_idx, decoded, strict=True):
            out[i] = resize_crop_tensor(orient(chw, exif_orientation(datas[i])), prep)
    for i, data in enumerate(datas):
        if out[i] is None:
            try:
                out[i] = torch.from_numpy(load_for_model(data, prep, MAX_PIXELS)).to(device)
            except BadImage:
                out[i] = torch.zeros((prep.crop, prep.crop, 3), dtype=torch.uint8, device=device)
    return torch.stack([t for t in out if t is not None])


def run_gpu_decode_ceiling(
    classifier: Classifier, files: Sequence[Path], batch_size: int, read_threads: int = 4
) -> CeilingResult:
    """Files read on threads; each batch decoded, resized and classified on the GPU."""
    device = classifier.device
    if device.type != "cuda":
        raise RuntimeError("the GPU-decode ceiling needs --device cuda")
    warm_up(classifier, batch_size)
    prep = classifier.loaded.preprocessing
    batches: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=3)

    def reader() -> None:
        with ThreadPoolExecutor(read_threads) as pool:
            for start in range(0, len(files), batch_size):
                batches.put(list(pool.map(Path.read_bytes, files[start : start + batch_size])))
        batches.put(None)

    started = time.perf_counter()
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    with torch.inference_mode():
        while (datas := batches.get()) is not None:
            batch = gpu_decode_batch(datas, prep, device)
            probs = classifier.logits(batch).softmax(dim=1)
            probs.topk(5, dim=1)[0].cpu()  # results back on the host, as the worker needs
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    thread.join()
    return CeilingResult(len(files), seconds, batch_size, 0, torch.get_num_threads())


def self_check() -> None:
    """The orientation mapping against Pillow's exif_transpose, on the CPU."""
    from PIL import ImageOps

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        image = Image.fromarray(pixels)
        exif = Image.Exif()
        exif[0x0112] = orientation
        buffer = io.BytesIO()
        image.save(buffer, "PNG", exif=exif)
        data = buffer.getvalue()
        expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
        chw = torch.from_numpy(pixels).permute(2, 0, 1)
        ours = orient(chw, exif_orientation(data)).permute(1, 2, 0).numpy()
        assert ours.shape == expected.shape and (ours == expected).all(), orientation
    print("orientation mapping matches Pillow for tags 1-8")


if __name__ == "__main__":
    self_check()
