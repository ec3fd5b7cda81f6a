"""Where a classify worker's time went during one busy period (from its first batch until every
stream is idle and nothing is queued): one line in the worker's log, and one
:class:`contract.events.BusyPeriod` for `up`'s terminal and benchmarks."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from contract.events import BusyPeriod


@dataclass
class BatchStats:
    images: int = 0  # settled: classified, rescored or failed
    failed: int = 0  # of ``images``: could not be classified (bad input)
    first_results: int = 0  # of ``images``: got their first result (the rest were rescored)
    batches: int = 0
    started: float = 0.0
    started_wall: float = 0.0
    decode_wait_s: float = 0.0  # the model waiting for decoders
    infer_s: float = 0.0
    device_decode_s: float = 0.0  # batched JPEG decode on the device, inference thread
    write_wait_s: float = 0.0  # the model waiting for the writer (back-pressure)
    write_s: float = 0.0  # on the writer thread
    # CPU seconds (thread CPU clocks): where the process's CPU went besides the model.
    process_cpu0: float = 0.0
    read_cpu_s: float = 0.0  # reading files
    hash_cpu_s: float = 0.0  # checking their content hash
    decode_cpu_s: float = 0.0  # on the decode threads: Pillow, or the header probe
    transfer_s: float = 0.0  # assembling a batch on the device (host arrays copied over)
    write_cpu_s: float = 0.0
    infer_cpu_s: float = 0.0  # the inference threads themselves (torch's helpers not included)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start(self) -> None:
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.process_cpu0 = time.process_time()

    def add_cpu(
        self,
        read: float = 0.0,
        decode: float = 0.0,
        write: float = 0.0,
        infer: float = 0.0,
        hash: float = 0.0,
    ) -> None:
        with self.lock:
            self.read_cpu_s += read
            self.hash_cpu_s += hash
            self.decode_cpu_s += decode
            self.write_cpu_s += write
            self.infer_cpu_s += infer

    def add_written(self, images: int, failed: int, first_results: int, seconds: float) -> None:
        with self.lock:
            self.batches += 1
            self.images += images
            self.failed += failed
            self.first_results += first_results
            self.write_s += seconds

    @property
    def wall_s(self) -> float:
        return time.monotonic() - self.started

    def event(self) -> BusyPeriod:
        wall = self.wall_s
        classified = self.images - self.failed
        return BusyPeriod(
            classified=self.first_results,
            rescored=max(0, classified - self.first_results),
            failed=self.failed,
            seconds=round(wall, 3),
            rate=round(self.images / wall, 2) if wall > 0 else 0.0,
            stages_s=self.stages(),
        )

    def stages(self) -> dict[str, float]:
        """Seconds per stage, summed over the threads that ran it: read, hash and decode on
        the decode threads (CPU time), device decode and transfer, model and write (wall time
        of the inference streams and the writer)."""
        return {
            name: round(value, 4)
            for name, value in (
                ("read", self.read_cpu_s),
                ("hash", self.hash_cpu_s),
                ("decode", self.decode_cpu_s),
                ("device_decode", self.device_decode_s - self.transfer_s),
                ("transfer", self.transfer_s),
                ("model", self.infer_s),
                ("write", self.write_s),
                ("waiting_for_decode", self.decode_wait_s),
            )
        }

    def line(self) -> str:
        wall = self.wall_s
        cpu = time.process_time() - self.process_cpu0
        rest = (
            cpu
            - self.read_cpu_s
            - self.hash_cpu_s
            - self.decode_cpu_s
            - self.write_cpu_s
            - self.infer_cpu_s
        )
        return (
            f"settled {self.images} image(s) ({self.failed} failed) in {self.batches} "
            f"batch(es) in {wall:.2f}s from "
            f"{time.strftime('%H:%M:%S', time.localtime(self.started_wall))}"
            f".{int(self.started_wall * 1000) % 1000:03d} "
            f"({self.images / wall if wall > 0 else 0:.1f} img/s): inference {self.infer_s:.2f}s, "
            f"device decode {self.device_decode_s:.2f}s, "
            f"waiting for decode {self.decode_wait_s:.2f}s, for the writer "
            f"{self.write_wait_s:.2f}s; writing {self.write_s:.2f}s. CPU {cpu:.2f}s: read "
            f"{self.read_cpu_s:.2f}, hash {self.hash_cpu_s:.2f}, decode "
            f"{self.decode_cpu_s:.2f}, inference threads "
            f"{self.infer_cpu_s:.2f}, write {self.write_cpu_s:.2f}, the rest (Celery, torch's "
            f"helper threads) {rest:.2f}"
        )
