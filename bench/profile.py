"""Profile the pipeline's processes during a burst with py-spy (``pip install py-spy``)::

    python -m bench.profile --images 600 [--role worker|watcher] [--set NAME=VALUE]

Writes collapsed stacks (one file per role) to bench/results/ and prints, per thread, the
functions where most samples land (idle waits included, so a stall shows up as time in a
wait).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.images import generate
from bench.pipeline import Pipeline
from bench.run import RESULTS, settings_env


def summarize(path: Path, top: int = 12) -> str:
    by_thread: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = frames[0]
        leaf = frames[-1]
        # Attribute to the deepest frame from our code or a well-known library call.
        ours = [f for f in frames if "/work/" in f or "(worker/" in f or "(db/" in f]
        key = leaf if not ours else f"{ours[-1]} -> {leaf}"
        by_thread[thread][key] += int(count)
        totals[thread] += int(count)
    lines = []
    for thread, counter in sorted(by_thread.items(), key=lambda kv: -totals[kv[0]]):
        lines.append(f"== {thread}: {totals[thread]} samples")
        for key, n in counter.most_common(top):
            lines.append(f"  {n / totals[thread]:6.1%}  {key[-160:]}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--role", default="worker", choices=["worker", "watcher"])
    parser.add_argument("--rate", type=int, default=250)
    parser.add_argument("--native", action="store_true")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    if not shutil.which("py-spy"):
        raise SystemExit("py-spy is not installed: pip install py-spy")
    images = generate(args.images)
    root = Path(tempfile.mkdtemp(prefix="inbox-profile-"))
    pipe = Pipeline(root, args.model, "cpu", settings_env=settings_env(args.set))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"profile-{args.role}-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    try:
        pipe.start(generate(32, seed=99).files)
        pid = pipe.roles()[args.role][0].pid
        cmd = ["py-spy", "record", "-p", str(pid), "-r", str(args.rate), "-f", "raw"]
        cmd += ["--threads", "--idle", "-o", str(out)]
        if args.native:
            cmd.append("--native")
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        result = pipe.run_burst(images.files)
        spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
        spy.wait(30)
        print(result.to_dict())
    finally:
        pipe.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(summarize(out))
    print(f"stacks: {out}")


if __name__ == "__main__":
    main()
