"""Before/after on the same machine at the same time: two code trees, or two sets of
settings, measured in alternation so that drift in the machine's speed (shared hosts drift by
10-20% over minutes) hits both alike::

    mkdir -p /tmp/before && git archive <commit> | tar -x -C /tmp/before
    python -m bench.compare --before /tmp/before --images 600 --rounds 3
    python -m bench.compare --before-set INFERENCE_STREAMS=1 --images 600 --rounds 3

``--before`` is a folder holding an older tree (all its packages, or only an older ``worker``
where the rest still fits it); it goes first on PYTHONPATH of the "before" pipeline and
ceiling, so whatever it holds shadows this checkout. ``--before-set``
and ``--after-set`` give either pipeline settings (as ``bench.run --set``); with settings
alone, only the pipelines are measured (the ceiling is the same code). Prints per-round figures
and the medians, and writes bench/results/compare-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import REPO, median, rmtree
from bench.images import generate
from bench.pipeline import Pipeline
from bench.run import RESULTS, settings_env

CEILING_SNIPPET = """
import json, sys
from bench.images import generate
from bench.ceiling import make_classifier, run_ceiling
from worker.classify import batching
try:
    from worker.model.layout import inference_layout
    auto = inference_layout(None, None, "cpu")
    layout = (auto.threads_per_stream, auto.streams)
except ImportError:  # a tree from before inference streams
    layout = (2,)
compiled = (16, 1) if hasattr(batching, "COMPILE_AFTER_IMAGES") else ()
c = make_classifier(sys.argv[1], "cpu", compile_for=compiled)
files = generate(int(sys.argv[2])).files
out = [run_ceiling(c, files, 16, 2, *layout).images_per_s for _ in range(int(sys.argv[3]))]
print(json.dumps(out))
"""


def ceiling(pythonpath: str, model: str, images: int, runs: int) -> list[float]:
    env = dict(os.environ, PYTHONPATH=pythonpath)
    out = subprocess.run(
        [sys.executable, "-c", CEILING_SNIPPET, model, str(images), str(runs)],
        env=env,
        cwd=tempfile.gettempdir(),  # not the checkout: '' on sys.path would shadow the overlay
        capture_output=True,
        text=True,
        check=True,
    )
    return [float(x) for x in json.loads(out.stdout.strip().splitlines()[-1])]


def _can_compile(tree: Path) -> bool:
    classifier = tree / "worker" / "classifier.py"
    return classifier.is_file() and "compile_async" in classifier.read_text()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compare")
    parser.add_argument("--before", type=Path, default=None, help="folder with an older tree")
    parser.add_argument("--before-set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--after-set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="resnet18")
    args = parser.parse_args()
    images = generate(args.images)
    warm = images.files[:320]
    work = Path(tempfile.mkdtemp(prefix="inbox-compare-"))
    before = f"{args.before.resolve()}{os.pathsep}{REPO}" if args.before else str(REPO)
    paths = {"before": before, "after": str(REPO)}
    sets = {"before": settings_env(args.before_set), "after": settings_env(args.after_set)}
    pipes = {
        name: Pipeline(
            work / name, args.model, "cpu", settings_env={"PYTHONPATH": path, **sets[name]}
        )
        for name, path in paths.items()
    }
    rounds: list[dict[str, Any]] = []
    try:
        for name, pipe in pipes.items():
            # Each worker that may compile its model in the background is waited for, so no
            # round pays for a compilation; a tree older than torch.compile support never does.
            tree = args.before if name == "before" and args.before is not None else REPO
            pipe.start(warm, expect_compile=_can_compile(tree))
            print(f"{name}: up, model {pipe.compile_outcome}", flush=True)
        for i in range(args.rounds):
            entry: dict[str, Any] = {}
            for name, pipe in pipes.items():
                if args.before is not None:  # two code trees: each has its own ceiling
                    # Two runs in a fresh process; the first pays one-off costs (kernel JIT).
                    entry[f"{name}_ceiling"] = round(
                        ceiling(paths[name], args.model, args.images, 2)[-1], 2
                    )
                entry[f"{name}_pipeline"] = round(pipe.run_burst(images.files).images_per_s, 2)
            rounds.append(entry)
            print(f"round {i + 1}: {entry}", flush=True)
    finally:
        for pipe in pipes.values():
            pipe.stop()
        rmtree(work)
    summary = {key: round(median([r[key] for r in rounds]), 2) for key in rounds[0]}
    summary["after_over_before"] = round(
        median([r["after_pipeline"] / r["before_pipeline"] for r in rounds]), 3
    )
    if args.before is not None:
        for name in paths:
            summary[f"{name}_ratio"] = round(
                median([r[f"{name}_pipeline"] / r[f"{name}_ceiling"] for r in rounds]), 3
            )
    print(json.dumps(summary, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"compare-{time.strftime('%Y%m%d-%H%M%S')}.json"
    meta = {"before": str(args.before), "before_set": sets["before"], "after_set": sets["after"]}
    path.write_text(json.dumps({**meta, "rounds": rounds, "summary": summary}, indent=2))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
