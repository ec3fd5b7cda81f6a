"""Labeled images to uint8 batches, decoded in a small thread pool (no DataLoader worker
processes: a Celery prefork child may not start children of its own).

Evaluation uses exactly the inference preprocessing
(:func:`worker.model.preprocess.load_for_model`);
training images are augmented as :mod:`worker.training.augment` chooses from the data. Both give
uint8 CHW; :class:`Normalizer` turns a batch into the model's float input on its device, the
same way the inference worker does.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

from contract.chunks import chunked
from imaging.decode import BadImage, decode
from worker.model.preprocess import Preprocessing, load_for_model
from worker.training.augment import training_transform
from worker.training.dataset import Sample

Batch = tuple[torch.Tensor, torch.Tensor]  # (uint8 NCHW images, int64 labels)

# Keep the decoded validation set in memory when it is at most this big.
EVAL_CACHE_BYTES = 512 * 1024 * 1024


def train_transform(prep: Preprocessing) -> v2.Transform:
    return v2.Compose(
        [v2.ToImage(), v2.RandomResizedCrop(prep.crop, antialias=True), v2.RandomHorizontalFlip()]
    )


class ImageSource:
    """Loads samples as uint8 CHW tensors; images that fail to decode are skipped, counted."""

    def __init__(self, prep: Preprocessing, max_pixels: int, threads: int = 2) -> None:
        self.prep = prep
        self.max_pixels = max_pixels
        self.threads = max(1, threads)
        self._augment = train_transform(prep)
        self._lock = threading.Lock()
        self.failed: dict[str, str] = {}

    def _read(self, sample: Sample) -> bytes | None:
        try:
            return sample.path.read_bytes()
        except OSError as exc:
            self._fail(sample, f"unreadable: {exc.strerror or exc}")
            return None

    def _fail(self, sample: Sample, reason: str) -> None:
        with self._lock:
            self.failed[sample.rel] = reason

    def eval_image(self, sample: Sample) -> torch.Tensor | None:
        data = self._read(sample)
        if data is None:
            return None
        try:
            array = load_for_model(data, self.prep, self.max_pixels)
        except BadImage as exc:
            self._fail(sample, str(exc))
            return None
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()

    def train_image(self, sample: Sample) -> torch.Tensor | None:
        data = self._read(sample)
        if data is None:
            return None
        try:
            image = decode(data, self.max_pixels, min_side=self.prep.resize)
        except BadImage as exc:
            self._fail(sample, str(exc))
            return None
        out: torch.Tensor = self._augment(image)
        return out.contiguous()

    def batches(
        self,
        samples: Sequence[Sample],
        batch_size: int,
        load: Callable[[Sample], torch.Tensor | None],
        generator: torch.Generator | None = None,
        drop_single: bool = False,
    ) -> Iterator[Batch]:
        """Batches in order (or shuffled with ``generator``), decoding the next batch while the
        caller works on this one. ``drop_single`` drops a last batch of one image (BatchNorm
        cannot train on it)."""
        order = list(range(len(samples)))
        if generator is not None:
            order = torch.randperm(len(samples), generator=generator).tolist()
        chunks = [list(chunk) for chunk in chunked(order, batch_size)]
        if drop_single and len(chunks) > 1 and len(chunks[-1]) == 1:
            chunks.pop()
        if not chunks:
            return
        with ThreadPoolExecutor(max_workers=self.threads) as pool:

            def submit(chunk: list[int]) -> list[Future[torch.Tensor | None]]:
                return [pool.submit(load, samples[i]) for i in chunk]

            pending = submit(chunks[0])
            for n, chunk in enumerate(chunks):
                ready = pending
                if n + 1 < len(chunks):
                    pending = submit(chunks[n + 1])
                images, labels = [], []
                for i, future in zip(chunk, ready, strict=True):
                    image = future.result()
                    if image is not None:
                        images.append(image)
                        labels.append(samples[i].label)
                if images:
                    yield torch.stack(images), torch.tensor(labels, dtype=torch.int64)


class EvalSet:
    """The validation images, decoded once and kept in memory when they fit, else streamed."""

    def __init__(self, source: ImageSource, samples: Sequence[Sample], batch_size: int) -> None:
        self.source = source
        self.samples = list(samples)
        self.batch_size = batch_size
        per_image = 3 * source.prep.crop * source.prep.crop
        self._cached: list[Batch] | None = None
        if per_image * len(self.samples) <= EVAL_CACHE_BYTES:
            self._cached = list(self._stream())
        kept = [s for s in self.samples if s.rel not in source.failed]
        self.samples = kept

    def _stream(self) -> Iterator[Batch]:
        return self.source.batches(self.samples, self.batch_size, self.source.eval_image)

    def __iter__(self) -> Iterator[Batch]:
        return iter(self._cached) if self._cached is not None else self._stream()

    def images(self, indices: Sequence[int]) -> list[np.ndarray]:
        """The ``indices``-th images (in iteration order) as uint8 HWC arrays, in that order."""
        wanted = {i: n for n, i in enumerate(indices)}
        found: dict[int, np.ndarray] = {}
        offset = 0
        for images, _ in self:
            for j in range(images.shape[0]):
                if offset + j in wanted:
                    found[offset + j] = images[j].permute(1, 2, 0).numpy()
            offset += images.shape[0]
            if len(found) == len(wanted):
                break
        return [found[i] for i in indices if i in found]

    def subset(self, labels: set[int]) -> list[Batch]:
        """Batches with only the images whose label is in ``labels``."""
        out = []
        for images, targets in self:
            keep = torch.tensor([int(t) in labels for t in targets], dtype=torch.bool)
            if keep.any():
                out.append((images[keep], targets[keep]))
        return out


class Normalizer:
    """uint8 NCHW (any device) -> normalised float NCHW on ``device``, as inference does it."""

    def __init__(self, prep: Preprocessing, device: torch.device) -> None:
        self.device = device
        self.mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1) * 255.0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.device, non_blocking=True).float()
        return x.sub_(self.mean).div_(self.std).contiguous(memory_format=torch.channels_last)


# The decoded training images stay in memory up to this; beyond, in a file mapped in memory.
TRAIN_CACHE_BYTES = 2 * 1024**3


class DecodedCache:
    """Every training image decoded once per run, to a ``resize`` x ``resize`` uint8 square
    (the shorter side scaled to ``resize``, centred), and augmented from there each epoch:
    decoding a JPEG costs more than the augmentation, and a run decodes each image once
    instead of once per epoch. In memory, or a memmap under ``spill_dir`` when it would not
    fit in :data:`TRAIN_CACHE_BYTES`."""

    def __init__(
        self, source: ImageSource, samples: Sequence[Sample], spill_dir: Path | None = None
    ) -> None:
        self.source = source
        side = source.prep.resize
        shape = (len(samples), side, side, 3)
        self.spill: Path | None = None
        if math.prod(shape) > TRAIN_CACHE_BYTES and spill_dir is not None:
            spill_dir.mkdir(parents=True, exist_ok=True)
            self.spill = spill_dir / f"train-{uuid.uuid4().hex}.u8"
            self.images: np.ndarray = np.memmap(self.spill, np.uint8, "w+", shape=shape)
        else:
            self.images = np.zeros(shape, np.uint8)
        square = Preprocessing(resize=side, crop=side, mean=source.prep.mean, std=source.prep.std)
        ok = np.zeros(len(samples), bool)

        def load(index: int) -> None:
            data = source._read(samples[index])
            if data is None:
                return
            try:
                self.images[index] = load_for_model(data, square, source.max_pixels)
                ok[index] = True
            except BadImage as exc:
                source._fail(samples[index], str(exc))

        with ThreadPoolExecutor(max_workers=source.threads) as pool:
            list(pool.map(load, range(len(samples))))
        self.keep = np.flatnonzero(ok)
        self.labels = torch.tensor([s.label for s in samples], dtype=torch.int64)
        self._augment, self.augmentation = training_transform(source.prep.crop, flip=True)

    def use_augmentation(self, transform: v2.Transform, description: str) -> None:
        """Augment with ``transform`` (uint8 CHW to uint8 CHW) from now on."""
        self._augment, self.augmentation = transform, description

    def sample_for_checks(self, limit: int = 4000) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``limit`` decoded training squares (uint8 NHWC) and their labels, spread
        evenly over the set: what the augmentation checks look at."""
        pick = self.keep[:: max(1, len(self.keep) // limit)][:limit]
        return np.asarray(self.images[pick]), self.labels[torch.as_tensor(pick)].numpy()

    def __len__(self) -> int:
        return len(self.keep)

    def steps_per_epoch(self, batch_size: int) -> int:
        """How many batches :meth:`batches` gives with ``drop_single`` (at least one)."""
        whole, rest = divmod(len(self), batch_size)
        return max(1, whole + (rest > 1))

    def batches(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        drop_single: bool = False,
        augment: bool = True,
    ) -> Iterator[Batch]:
        """Augmented batches (see :mod:`worker.training.augment`; the plain squares with
        ``augment=False``), shuffled with ``generator``: uint8 NCHW."""
        order = self.keep
        if generator is not None:
            order = order[torch.randperm(len(order), generator=generator).numpy()]
        chunks = [list(c) for c in chunked(list(order), batch_size)]
        if drop_single and len(chunks) > 1 and len(chunks[-1]) == 1:
            chunks.pop()
        for chunk in chunks:
            squares = torch.from_numpy(np.ascontiguousarray(self.images[chunk])).permute(0, 3, 1, 2)
            if augment:
                squares = torch.stack([self._augment(image) for image in squares])
            yield squares.contiguous(), self.labels[torch.as_tensor(chunk)]

    def close(self) -> None:
        if self.spill is not None:
            del self.images
            self.spill.unlink(missing_ok=True)
            self.spill = None
