"""Batched JPEG decoding on the worker's device: nvjpeg on a GPU, through
``torchvision.io.decode_jpeg(list, device=...)``, with EXIF orientation, resize and centre crop
done there too, so on a GPU worker a batch never visits host memory.

What the batched decoder does not take falls back per file to the Pillow path
(:mod:`worker.model.preprocess`), in the same batch:

- :func:`probe` (run on the decode threads, header only) sends everything that is not a plain
  baseline/progressive RGB or greyscale JPEG under the pixel limit to Pillow: PNG, WebP, GIF,
  TIFF, CMYK/YCCK JPEGs, truncated JPEGs (no end-of-image marker), oversized images;
- :func:`decode_batch` returns None for a file the device decoder refused, and the caller
  decodes it with Pillow; a file that neither can decode fails alone, with Pillow's reason.

The output matches the Pillow path within a stated tolerance (docs/architecture.md, "GPU
workers"), not
exactly: Pillow decodes JPEGs scaled down in the DCT, this path decodes at full size, and both
then resample with an antialiased bilinear filter.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from worker.model.preprocess import Preprocessing, load_for_model

#: Most decoded pixels one ``decode_jpeg`` call holds on the device (a batch of 256 12-Mpx
#: photos would otherwise be 9 GB of RGB at once).
PIXEL_BUDGET = 200_000_000

_EXIF_ORIENTATION = 0x0112
_JPEG_EOI = b"\xff\xd9"

# torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec; they are the
# batched nvjpeg path this module uses, so the warning is said once in docs/architecture.md,
# not per batch.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities")


def device_decode_wanted(mode: str, device_type: str) -> bool:
    """Whether ``GPU_DECODE`` (``mode``) asks for batched device decode on a ``device_type``
    ('cpu', 'cuda') device."""
    if mode == "auto":
        return device_type == "cuda"
    return mode == "on"


@dataclass(frozen=True, slots=True)
class Encoded:
    """A JPEG the batched decoder takes: its bytes and what its header says."""

    data: bytes
    width: int
    height: int
    orientation: int  # EXIF 1..8, 1 when absent


def probe(data: bytes, max_pixels: int) -> Encoded | None:
    """An :class:`Encoded` when ``data`` is a JPEG the device decoder takes, else None (the
    Pillow path decodes it, and says why it cannot where it cannot). Reads the header only."""
    if data[:2] != b"\xff\xd8" or data.rstrip(b"\0")[-2:] != _JPEG_EOI:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                return None
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # any header Pillow cannot read: Pillow's own path says what is wrong
        return None
    if not (0 < width * height <= max_pixels):
        return None
    if not isinstance(orientation, int) or not 1 <= orientation <= 8:
        orientation = 1
    return Encoded(data, width, height, orientation)


def orient(chw: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to a CHW (or NCHW) tensor, as Pillow's ``exif_transpose``."""
    h, w = chw.dim() - 2, chw.dim() - 1
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


def resize_crop(nchw: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """Shorter side to ``prep.resize`` (bilinear, antialiased), centre crop ``prep.crop``
    (zero-padded where the image is smaller, as the Pillow path pads). uint8 NHWC out."""
    from torchvision.transforms.v2 import functional as F

    resized = F.resize(nchw, [prep.resize], antialias=True)
    return F.center_crop(resized, [prep.crop, prep.crop]).permute(0, 2, 3, 1)


def _chunks(encoded: Sequence[Encoded]) -> list[list[int]]:
    """Indices of ``encoded`` in runs of at most :data:`PIXEL_BUDGET` pixels."""
    runs: list[list[int]] = [[]]
    pixels = 0
    for i, item in enumerate(encoded):
        size = item.width * item.height
        if runs[-1] and pixels + size > PIXEL_BUDGET:
            runs.append([])
            pixels = 0
        runs[-1].append(i)
        pixels += size
    return [run for run in runs if run]


def decode_files(datas: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """One batched decode; where the batch call fails, each file alone (None: it failed)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    # The bytes are only read: no copy into a writable buffer (torch warns once otherwise).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        tensors = [torch.frombuffer(d, dtype=torch.uint8) for d in datas]
    if device.type == "cuda":
        # torchvision's CUDA decode writes on a stream of its own, not ordered after this
        # thread's: memory this stream freed but still reads (the last batch's activations)
        # can be handed to the decoder and overwritten; seen on Hopper (pytorch/vision#9606).
        # Waiting for this stream's queued work first closes that window.
        torch.cuda.current_stream(device).synchronize()
    try:
        return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass
    out: list[torch.Tensor | None] = []
    for tensor in tensors:
        try:
            out.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out.append(None)
    return out


def decode_batch(
    encoded: Sequence[Encoded], prep: Preprocessing, device: torch.device
) -> list[torch.Tensor | None]:
    """uint8 HWC tensors on ``device``, model-sized, one per input; None where the device
    decoder refused the file (the caller falls back to Pillow for it)."""
    out: list[torch.Tensor | None] = [None] * len(encoded)
    for run in _chunks(encoded):
        decoded = decode_files([encoded[i].data for i in run], device)
        # Images of one shape and orientation (a camera's burst, a scanner's pages) are
        # oriented, resized and cropped together: a few kernels per group, not per image.
        groups: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}
        for i, chw in zip(run, decoded, strict=True):
            if chw is not None:
                key = (*chw.shape, encoded[i].orientation)
                groups.setdefault(key, []).append((i, chw))
        for key, members in groups.items():
            stacked = torch.stack([t for _, t in members])
            batch = resize_crop(orient(stacked, key[-1]), prep)
            for (i, _), hwc in zip(members, batch, strict=True):
                out[i] = hwc
        del decoded, groups  # the full-size pixels of this run, before the next is decoded
    return out


def prepare(data: bytes, prep: Preprocessing, max_pixels: int) -> np.ndarray | Encoded:
    """What a decode thread hands on: the JPEG for the device decoder, else Pillow's
    model-sized array. Raises :class:`~imaging.decode.BadImage`."""
    encoded = probe(data, max_pixels)
    return encoded if encoded is not None else load_for_model(data, prep, max_pixels)


def assemble(
    items: Sequence[np.ndarray | Encoded],
    prep: Preprocessing,
    device: torch.device,
    max_pixels: int,
    *,
    on_device: bool = True,
    pool: Executor | None = None,
) -> list[torch.Tensor | np.ndarray | Exception]:
    """Each of ``items`` as a model-sized row: arrays as they are, the JPEGs decoded on
    ``device`` in one call (unless ``on_device`` is False), and those the device refused by
    Pillow, on ``pool``'s threads in parallel (the caller's thread without one); where Pillow
    cannot either, its exception, so that the file fails alone. An error of the device decoder
    itself (not of one file) is raised."""
    jpegs = [i for i, item in enumerate(items) if isinstance(item, Encoded)]
    decoded: list[torch.Tensor | None] = [None] * len(jpegs)
    if on_device and jpegs:
        decoded = decode_batch([items[i] for i in jpegs], prep, device)  # type: ignore[misc]
    from_device = dict(zip(jpegs, decoded, strict=True))
    refused = [i for i in jpegs if from_device[i] is None]
    fallback = dict(zip(refused, _pillow(items, refused, prep, max_pixels, pool), strict=True))
    rows: list[torch.Tensor | np.ndarray | Exception] = []
    for i, item in enumerate(items):
        if not isinstance(item, Encoded):
            rows.append(item)
        elif (row := from_device[i]) is not None:
            rows.append(row)
        else:
            rows.append(fallback[i])
    return rows


def _pillow(
    items: Sequence[np.ndarray | Encoded],
    indices: Sequence[int],
    prep: Preprocessing,
    max_pixels: int,
    pool: Executor | None,
) -> list[np.ndarray | Exception]:
    def decode(i: int) -> np.ndarray | Exception:
        item = items[i]
        assert isinstance(item, Encoded)
        try:
            return load_for_model(item.data, prep, max_pixels)
        except Exception as exc:
            return exc

    if pool is None or len(indices) < 2:
        return [decode(i) for i in indices]
    return list(pool.map(decode, indices))


def stack_on(device: torch.device, rows: Sequence[torch.Tensor | np.ndarray]) -> torch.Tensor:
    """``rows`` (HWC tensors already on ``device`` and host arrays Pillow decoded) as one NHWC
    batch on ``device``, in order; the host arrays go over in one copy from pinned memory,
    without blocking this thread."""
    host = [r for r in rows if isinstance(r, np.ndarray)]
    uploaded: Iterator[torch.Tensor] = iter(())
    if host:
        staged = torch.from_numpy(np.stack(host))
        if device.type == "cuda":
            staged = staged.pin_memory()
        uploaded = iter(staged.to(device, non_blocking=True))
    return torch.stack([next(uploaded) if isinstance(r, np.ndarray) else r for r in rows])
