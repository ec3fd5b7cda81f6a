"""Server time of the web app's list endpoints on a big ledger: a page of 100 results (each
sort, and the filters a person uses) and of the review queue, with a million rows in SQLite.

    python -m bench.web_bench --rows 1000000 --requests 200

The ledger is filled with plain bulk inserts (what a million classified images leave: rows
in images and image_paths, 5 top-k labels each, a few percent failed, some human labels),
then every endpoint is asked ``--requests`` times through the real ASGI app in this process,
each time from a random place in the listing (a cursor made at a random row, as a person deep
in the pages would send). The time measured is the app's own (its Server-Timing header),
not the HTTP client's. Prints p50/p95 per endpoint and writes bench/results/web-*.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, text

from bench.harness import REPO, cpu_model, rmtree
from contract.clock import utcnow
from contract.settings import Settings
from db import migrate
from db.browse import encode_cursor
from db.engine import make_engine
from db.models import Image, ImagePath, Label, ModelVersion

RESULTS = REPO / "bench" / "results"
CLASSES = [f"class_{i:03d}" for i in range(200)]


#: The columns a row leaves empty until something fills them.
BLANK: dict[str, Any] = {
    "error": None,
    "error_kind": None,
    "label": None,
    "confidence": None,
    "topk": None,
    "margin": None,
    "model_version_id": None,
    "classified_at": None,
    "human_label": None,
    "labeled_at": None,
}


def fill(settings: Settings, rows: int, seed: int = 0) -> None:
    """``rows`` images (3 % failed, the rest classified, 1 % of those labeled by a person),
    a path each, in bulk inserts of 20,000, then ANALYZE."""
    rng = random.Random(seed)
    engine = make_engine(settings.db_url)
    now = utcnow()
    with engine.begin() as db:
        db.execute(insert(ModelVersion).values(**_base_version(now)))
    batch = 20_000
    for start in range(0, rows, batch):
        images: list[dict[str, Any]] = []
        paths: list[dict[str, Any]] = []
        labels: list[dict[str, Any]] = []
        for i in range(start, min(rows, start + batch)):
            image_id = i + 1
            if rng.random() < 0.03:
                images.append(_failed_image(i, now))
            else:
                image = _classified_image(i, rng, now)
                images.append(image)
                if image["human_label"]:
                    labels.append(
                        {
                            "image_id": image_id,
                            "label": image["human_label"],
                            "source": "human",
                            "created_at": now,
                        }
                    )
            paths.append(
                {
                    "id": image_id,
                    "image_id": image_id,
                    "path": f"/srv/inbox/{i // 10_000:03d}/photo_{i:07d}.jpg",
                    "size": 100_000,
                    "mtime_ns": 1,
                    "first_seen_at": now,
                    "last_seen_at": now,
                }
            )
        with engine.begin() as db:
            db.execute(insert(Image), images)
            db.execute(insert(ImagePath), paths)
            if labels:
                db.execute(insert(Label), labels)
    with engine.begin() as db:
        db.execute(text("ANALYZE"))
    engine.dispose()


def _base_version(now: datetime) -> dict[str, Any]:
    return {
        "id": 1,
        "name": "base:resnet18:none",
        "arch": "resnet18",
        "weights": "none",
        "classes": CLASSES,
        "status": "active",
        "trained": False,
        "created_at": now,
        "activated_at": now,
    }


def _failed_image(i: int, now: datetime) -> dict[str, Any]:
    return {
        **BLANK,
        "id": i + 1,
        "sha256": f"{i:064x}",
        "size": 100_000,
        "status": "failed",
        "error": "corrupt or truncated image: x",
        "error_kind": "corrupt",
        "attempts": 1,
        "created_at": now,
        "updated_at": now,
    }


def _classified_image(i: int, rng: random.Random, now: datetime) -> dict[str, Any]:
    # A skewed label mix, as real collections have: a few big classes, a long tail.
    top = CLASSES[min(int(rng.paretovariate(1.2)) - 1, len(CLASSES) - 1)]
    conf = rng.random() ** 0.5
    rest = [c for c in rng.sample(CLASSES, 5) if c != top][:4]
    shares = sorted((rng.random() * (1 - conf) for _ in rest), reverse=True)
    topk = [{"label": top, "confidence": round(conf, 6)}] + [
        {"label": c, "confidence": round(s, 6)} for c, s in zip(rest, shares, strict=False)
    ]
    human = top if rng.random() < 0.01 else None
    return {
        **BLANK,
        "id": i + 1,
        "sha256": f"{i:064x}",
        "size": 100_000,
        "status": "done",
        "label": top,
        "confidence": conf,
        "topk": topk,
        "margin": conf - topk[1]["confidence"],
        "model_version_id": 1,
        "classified_at": now,
        "human_label": human,
        "labeled_at": now if human else None,
        "attempts": 1,
        "created_at": now,
        "updated_at": now,
    }


def scenarios(rows: int, rng: random.Random) -> dict[str, Any]:
    """endpoint name -> a function giving the next request's (path, params)."""

    def deep(kind: str, *key: Any) -> str:
        return encode_cursor(kind, list(key))

    def some_id() -> int:
        return rng.randint(1, rows)

    return {
        "results, newest, deep page": lambda: (
            "/api/results",
            {"cursor": deep("results:newest", (i := some_id()), i)},
        ),
        "results, least confident, deep page": lambda: (
            "/api/results",
            {
                "sort": "confidence",
                "cursor": deep("results:confidence", rng.random(), (i := some_id()), i),
            },
        ),
        "results, label=<big class>, most confident": lambda: (
            "/api/results",
            {"label": CLASSES[0], "sort": "-confidence"},
        ),
        "results, label=<tail class>, newest, deep page": lambda: (
            "/api/results",
            {
                "label": rng.choice(CLASSES[50:]),
                "cursor": deep("results:newest", (i := some_id()), i),
            },
        ),
        "results, confidence 0.4-0.6, newest": lambda: (
            "/api/results",
            {"min_confidence": 0.4, "max_confidence": 0.6},
        ),
        "results, status=failed, newest": lambda: ("/api/results", {"status": "failed"}),
        "results, reviewed, newest": lambda: ("/api/results", {"reviewed": "true"}),
        "review, first page": lambda: ("/api/review", {"limit": 100}),
        "review, deep page": lambda: (
            "/api/review",
            {"limit": 100, "cursor": deep("review", rng.random() * 0.5, some_id())},
        ),
    }


def warm(db_file: Path) -> None:
    """Read the database file once, so the pages it needs are in the OS cache, as they are on
    a server that has been serving for a while (this VM also reclaims idle cache pages: a
    cold page then costs a disk read, tens to hundreds of ms, which is not the query)."""
    with open(db_file, "rb") as handle:
        while handle.read(1 << 24):
            pass


def measure(settings: Settings, requests: int, rows: int) -> dict[str, dict[str, float]]:
    from fastapi.testclient import TestClient

    from web.app import create_app

    rng = random.Random(1)
    out: dict[str, dict[str, float]] = {}
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8000") as client:
        for name, next_request in scenarios(rows, rng).items():
            times = []
            items = 0
            for n in range(requests + 3):
                path, params = next_request()
                response = client.get(path, params={"limit": 100, **params})
                response.raise_for_status()
                if n >= 3:  # the first requests warm SQLite's page cache
                    times.append(float(response.headers["server-timing"].split("dur=")[1]))
                    items += len(response.json()["items"])
            times.sort()
            out[name] = {
                "p50_ms": round(statistics.median(times), 2),
                "p95_ms": round(times[int(len(times) * 0.95) - 1], 2),
                "max_ms": round(times[-1], 2),
                "items_per_page": round(items / requests, 1),
            }
            print(
                f"{name:<48} p50 {out[name]['p50_ms']:7.2f} ms   p95 {out[name]['p95_ms']:7.2f} ms",
                flush=True,
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.web_bench")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--keep", type=Path, default=None, help="build (or reuse) the DB here")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="inbox-web-bench-"))
    settings = Settings(data_dir=work, inbox=work / "inbox", weights="none", redis_url=None)
    db_file = work / "results.db"
    try:
        if not db_file.exists():
            started = time.monotonic()
            migrate.upgrade(settings.db_url)
            fill(settings, args.rows)
            print(
                f"filled {args.rows:,} rows in {time.monotonic() - started:.0f}s "
                f"({db_file.stat().st_size / 2**20:.0f} MiB)",
                flush=True,
            )
        warm(db_file)
        figures = measure(settings, args.requests, args.rows)
    finally:
        if args.keep is None:
            rmtree(work)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"web-{time.strftime('%Y%m%d-%H%M%S')}.json"
    meta = {
        "rows": args.rows,
        "requests": args.requests,
        "cpu": cpu_model(),
        "date": time.strftime("%Y-%m-%d"),
    }
    path.write_text(json.dumps({**meta, "endpoints": figures}, indent=2))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
