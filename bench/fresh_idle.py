"""Idle latency on a fresh ``up``: single files dropped one at a time into an ``up`` that has
just started (``--weights none``, no warm-up), so the first images are classified before the
worker has built its int8 model from them: what a new user's first files see.

    python -m bench.fresh_idle [--model resnet18] [--drops 25] [--set PRECISION=fp32]

Prints drop -> row p50/p95 (the first drop includes loading the model) and which backend the
worker said it served with; ``--set`` passes a setting to ``up`` (e.g. ``PRECISION=fp32``,
what the precision probe picks on CPUs without fast bf16).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.harness import cpu_model, rmtree, say
from bench.images import generate
from bench.pipeline import Pipeline
from bench.run import settings_env


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fresh_idle")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--drops", type=int, default=25, help="single files, one at a time")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between drops")
    parser.add_argument("--set", action="append", default=[], help="NAME=VALUE settings")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="inbox-fresh-idle-"))
    pipe = Pipeline(root, args.model, "cpu", settings_env=settings_env(args.set))
    try:
        pipe.start([], rounds=0, expect_compile=False)
        latency = pipe.idle_latency(generate(args.drops, seed=7).files, args.pause).to_dict()
        serving = [
            line.split("classifies with ", 1)[1].strip()
            for log in (pipe.data_dir / "logs").glob("worker-*.log")
            for line in log.read_text().splitlines()
            if "classifies with" in line
        ]
    finally:
        pipe.stop()
        rmtree(root)
    say(f"{cpu_model()}; {args.model}; settings {args.set or 'defaults'}")
    for line in serving:
        say(f"  served with {line}")
    say(f"  fresh up, {args.drops} single drops: {json.dumps(latency['latency'])}")


if __name__ == "__main__":
    main()
