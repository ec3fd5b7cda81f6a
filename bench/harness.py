"""Plumbing shared by the bench phases: machine info, distinct image variants, staging and the
rename burst, CPU accounting, percentiles, and child processes."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
ENV_PREFIX = "INBOX_CLASSIFIER_"


# --- machine -------------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info(device: str) -> dict[str, Any]:
    import PIL
    import torch
    import torchvision

    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "device": device,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    cpu = torch.backends.cpu.get_cpu_capability()
    info["cpu_capability"] = cpu
    info["amx"] = bool(torch.cpu._is_amx_tile_supported())
    info["avx512_bf16"] = bool(torch.cpu._is_avx512_bf16_supported())
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# --- distinct content ----------------------------------------------------------------------------


def variant(data: bytes, tag: int) -> bytes:
    """The same picture with different bytes (so a different sha256, so not deduplicated by the
    ledger), decoding exactly as fast: a JPEG comment segment or a PNG text chunk."""
    if tag == 0:
        return data
    note = f"bench-variant-{tag}".encode()
    if data[:2] == b"\xff\xd8":  # JPEG: a COM segment right after SOI
        return data[:2] + b"\xff\xfe" + struct.pack(">H", len(note) + 2) + note + data[2:]
    if data[:8] == b"\x89PNG\r\n\x1a\n":  # PNG: a tEXt chunk right after IHDR
        ihdr_end = 8 + 8 + struct.unpack(">I", data[8:12])[0] + 4
        body = b"Comment\x00" + note
        chunk = (
            struct.pack(">I", len(body))
            + b"tEXt"
            + body
            + struct.pack(">I", zlib.crc32(b"tEXt" + body) & 0xFFFFFFFF)
        )
        return data[:ihdr_end] + chunk + data[ihdr_end:]
    return data + note  # other formats: trailing bytes


def stage(sources: Sequence[Path], staging: Path, tag: int, prefix: str = "") -> list[Path]:
    """Write variant ``tag`` of ``sources`` into ``staging`` (not watched). Returns the paths."""
    staging.mkdir(parents=True, exist_ok=True)
    out = []
    for src in sources:
        dest = staging / f"{prefix}t{tag}_{src.name}"
        dest.write_bytes(variant(src.read_bytes(), tag))
        out.append(dest)
    # Data on disk before the burst, so the burst measures the pipeline, not our writes.
    os.sync()
    return out


def burst(staged: Sequence[Path], inbox: Path) -> dict[str, float]:
    """Rename every staged file into ``inbox`` as fast as possible (same filesystem: atomic,
    a completed file). Returns inbox path -> wall time (time.time()) of its rename."""
    inbox.mkdir(parents=True, exist_ok=True)
    dropped: dict[str, float] = {}
    for path in staged:
        dest = inbox / path.name
        os.rename(path, dest)
        dropped[str(dest)] = time.time()
    return dropped


# --- statistics ----------------------------------------------------------------------------------


def percentiles(values_s: Iterable[float], qs: Sequence[int] = (50, 95, 99)) -> dict[str, float]:
    arr = np.asarray(list(values_s), dtype=float)
    if arr.size == 0:
        return {f"p{q}_ms": float("nan") for q in qs}
    out = {f"p{q}_ms": round(float(np.percentile(arr, q)) * 1000, 1) for q in qs}
    out["max_ms"] = round(float(arr.max()) * 1000, 1)
    out["mean_ms"] = round(float(arr.mean()) * 1000, 1)
    return out


def median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=float))) if values else float("nan")


# --- CPU accounting ------------------------------------------------------------------------------


def _cpu_stat() -> tuple[float, float]:
    """Machine-wide (busy, steal) CPU seconds so far, all cores, from /proc/stat. Busy counts
    steal too: time the hypervisor gave this VM's CPUs to someone else."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    steal = values[7] if len(values) > 7 else 0
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values[:8]) - idle) / tick, steal / tick


def _tree_cpu(pids: Iterable[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system + t.children_user + t.children_system
    return out


@dataclass
class CpuMeter:
    """CPU seconds per named process over an interval, and the machine's total, so that
    time taken by anything else on the machine (other users' tests...) shows up."""

    named: dict[str, int]
    started: float = 0.0
    busy0: float = 0.0
    steal0: float = 0.0
    cpu0: dict[int, float] = field(default_factory=dict)

    def __enter__(self) -> CpuMeter:
        self.started = time.perf_counter()
        self.busy0, self.steal0 = _cpu_stat()
        self.cpu0 = _tree_cpu([os.getpid(), *self.named.values()])
        return self

    def __exit__(self, *exc: object) -> None:
        self.result = self.read()

    def read(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.started
        busy1, steal1 = _cpu_stat()
        busy, steal = busy1 - self.busy0, steal1 - self.steal0
        cpu1 = _tree_cpu([os.getpid(), *self.named.values()])
        per = {
            name: round(cpu1.get(pid, 0.0) - self.cpu0.get(pid, 0.0), 2)
            for name, pid in {"bench": os.getpid(), **self.named}.items()
        }
        ours = sum(per.values())
        cores = os.cpu_count() or 1
        return {
            "wall_s": round(wall, 2),
            "machine_busy_cores": round(busy / wall, 2) if wall else 0.0,
            "cpu_s": per,
            "other_processes_cpu_s": round(max(0.0, busy - ours), 2),
            "other_processes_share": round(max(0.0, busy - ours) / (wall * cores), 3)
            if wall
            else 0.0,
            "steal_share": round(steal / (wall * cores), 3) if wall else 0.0,
        }


# --- child processes -----------------------------------------------------------------------------


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ without INBOX_CLASSIFIER_* from the shell, plus ``extra``; repo on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    # The caller's PYTHONPATH first (an overlay with other versions of packages, e.g. to
    # measure a "before"), then this checkout.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH", ""), str(REPO)]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def spawn(
    args: Sequence[str], log: Path, env: dict[str, str], cwd: Path
) -> subprocess.Popen[bytes]:
    """Start ``python args...`` in its own session, asking the kernel to stop it (SIGTERM)
    when the benchmark dies, however it ends (`timeout`, Ctrl-C, kill -9): the `up` it starts
    then stops its own children."""
    from inbox_classifier.lifeline import dies_with_parent

    log.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log, "ab")  # noqa: SIM115 - owned by the child
    return subprocess.Popen(
        [sys.executable, *args],
        env=env,
        cwd=cwd,
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=dies_with_parent(),  # on the main thread: the signal follows the forker
    )


def descendants(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).children(recursive=True)
    return []


def stop_tree(process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """SIGTERM the process (it stops its own children), then make sure every descendant that
    it started is gone, by pid."""
    tree = descendants(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    _gone, alive = psutil.wait_procs(tree, timeout=10)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


def tail(path: Path, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class GpuSampler:
    """GPU utilisation and memory, sampled by ``nvidia-smi`` every ``interval_s`` while the
    block runs (no GPU, no nvidia-smi: an empty result)."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_ms = int(interval_s * 1000)
        self.process: subprocess.Popen[str] | None = None
        self.result: dict[str, Any] = {}

    def __enter__(self) -> GpuSampler:
        smi = shutil.which("nvidia-smi")
        if smi:
            self.process = subprocess.Popen(
                [
                    smi,
                    "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                    f"-lms={self.interval_ms}",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is None:
            return
        self.process.terminate()
        out, _ = self.process.communicate(timeout=10)
        util, memory = [], []
        for line in out.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
                util.append(int(parts[0]))
                memory.append(int(parts[1]))
        if util:
            self.result = {
                "samples": len(util),
                "utilisation_mean_pct": round(sum(util) / len(util), 1),
                "utilisation_max_pct": max(util),
                "memory_max_mib": max(memory),
            }


def gpu_memory_mib(pids: dict[str, int]) -> dict[str, int]:
    """GPU memory each named process holds (``nvidia-smi --query-compute-apps``); empty
    without a GPU."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return {}
    try:
        out = subprocess.run(
            [smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    by_pid = {}
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            by_pid[int(parts[0])] = int(parts[1])
    return {name: by_pid[pid] for name, pid in pids.items() if pid in by_pid}


def say(text: str) -> None:
    """A line of a benchmark's progress, at once (its output is often piped)."""
    print(text, flush=True)
