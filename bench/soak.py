"""bench.run's soak: many more images through one pipeline in waves, the worker's memory read
after each, to see whether it grows."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench.harness import say
from bench.images import generate
from bench.pipeline import Pipeline

SOAK_IDLE_S = 1.5  # long enough for a worker to end its busy period (0.2 s idle) and trim


def soak(
    root: Path,
    args: argparse.Namespace,
    device: str,
    env: dict[str, str],
    warm: list[Path],
    warm_rounds: int,
) -> dict[str, Any]:
    """``args.soak`` images in waves of distinct content. After each wave the worker's RSS is
    read twice: as the last row lands (``busy``, which includes whatever the allocator holds
    from the burst) and once the worker has gone idle (``idle``: a worker ends its busy period
    0.2 s after its queue empties and gives free memory back). Growth is measured on the idle
    figures, from the end of the first wave (caches and pools are warm by then) to the end of
    the last; the busy figures' range is reported too."""
    base = generate(min(args.soak_wave, args.images)).files
    pipe = Pipeline(root, args.model, device, settings_env=env)
    waves: list[dict[str, Any]] = []
    say(f"soak: {args.soak} images in waves of {len(base)}...")
    try:
        pipe.start(warm, rounds=warm_rounds)
        time.sleep(SOAK_IDLE_S)
        waves.append({"images": 0, "rss_mib": pipe.worker_rss_mib()})
        total = 0
        while total < args.soak:
            files = base[: min(len(base), args.soak - total)]
            result = pipe.run_burst(files)
            busy = pipe.worker_rss_mib()
            time.sleep(SOAK_IDLE_S)
            total += len(files)
            waves.append(
                {
                    "images": total,
                    "images_per_s": round(result.images_per_s, 1),
                    "rss_mib": pipe.worker_rss_mib(),
                    "busy_rss_mib": busy,
                }
            )
            say(
                f"  {total} images: worker RSS {waves[-1]['rss_mib']} MiB idle, {busy} MiB "
                f"as the last row landed; {result.images_per_s:.0f} img/s"
            )
            for path in pipe.inbox.iterdir():  # keep the disk bounded; rows stay
                path.unlink()
    finally:
        pipe.stop()
    first = waves[1]["rss_mib"][0] if len(waves) > 1 else waves[0]["rss_mib"][0]
    last = waves[-1]["rss_mib"][0]
    busy_all = [w["busy_rss_mib"][0] for w in waves[1:]]
    return {
        "waves": waves,
        "rss_growth_pct": round((last - first) / first * 100, 2),
        "rss_growth_from_warm_pct": round(
            (last - waves[0]["rss_mib"][0]) / waves[0]["rss_mib"][0] * 100, 2
        ),
        "busy_rss_mib_range": [min(busy_all, default=0.0), max(busy_all, default=0.0)],
    }
