"""The benchmark harness (bench/) keeps working: one tiny run of the real thing, end to end.
Its figures are not checked here (speed targets live in the benchmark and docs/performance.md), only
that every phase ran on real parts and reported what it measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_bench(tmp_path: Path, *args: str) -> dict:  # type: ignore[type-arg]
    out = tmp_path / "results"
    # Compiling off: the same short run on every machine (bf16 CPUs would compile).
    command = [sys.executable, "-m", "bench.run", "--out", str(out), "--set", "TORCH_COMPILE=off"]
    subprocess.run(
        [*command, "--work-dir", str(tmp_path / "w"), *args],
        cwd=ROOT,
        check=True,
        timeout=900,
    )
    (result,) = out.glob("*.json")
    return json.loads(result.read_text())  # type: ignore[no-any-return]


@pytest.mark.slow
def test_the_harness_measures_ceiling_pipeline_idle_and_naive(tmp_path: Path) -> None:
    images = 24
    result = run_bench(
        tmp_path,
        *("--images", str(images), "--repeat", "1", "--no-sweep", "--no-scale-out"),
        *("--idle", "3", "--idle-pause", "0.1", "--naive-images", "8"),
    )
    summary = result["summary"]
    burst = result["pipeline"]["pairs"][0]["pipeline"]
    assert burst["images"] == burst["done"] == images, "every image classified"
    assert burst["latency"]["p50_ms"] > 0 and burst["images_per_s"] > 0
    assert result["pipeline"]["pairs"][0]["ceiling"]["images"] == images
    assert result["idle"]["images"] == 3 and result["idle"]["done"] == 3
    (naive,) = result["naive"]["runs"]
    assert naive["images"] == 8 and summary["naive_img_s"] == naive["images_per_s"] > 0
    assert summary["pipeline_over_ceiling"] == pytest.approx(
        burst["images_per_s"] / result["pipeline"]["pairs"][0]["ceiling"]["images_per_s"],
        rel=0.01,
    )
    assert set(summary["targets_met"]) == {
        "pipeline_over_ceiling",
        "pipeline_over_naive",
        "idle_p50",
        "idle_p95",
    }
    machine = result["machine"]
    assert machine["cores"] >= 1 and machine["torch"] and machine["device"] == "cpu"
    assert result["pipeline"]["compile"], "the worker said whether it compiles"


@pytest.mark.slow
def test_the_soak_reports_worker_rss_per_wave(tmp_path: Path) -> None:
    result = run_bench(
        tmp_path, *("--images", "16", "--soak", "32", "--soak-wave", "16", "--soak-only")
    )
    waves = result["soak"]["waves"]
    assert [w["images"] for w in waves] == [0, 16, 32]
    assert all(w["rss_mib"][0] > 100 for w in waves), "a worker with a resnet18 loaded"
    assert all(w["busy_rss_mib"][0] > 100 for w in waves[1:])
    assert isinstance(result["summary"]["soak_rss_growth_pct"], float)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_gpu_script_dry_run_writes_every_figure_as_it_goes(tmp_path: Path) -> None:
    """`bash bench/gpu_check.sh N --cpu`: the GPU session's steps on the CPU (one run here, to
    keep the suite short), each figure in $OUT/results.json as soon as it is measured."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "GPU_CHECK_RUNS": "resnet18"}
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh", "40", "--cpu"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert {p.name for p in out.iterdir()} <= {
        "machine.txt",
        "progress.log",
        "results.json",
        "gpu-util.csv",
        "cuda-tests.txt",
    }  # at most the 8 files a GPU session returns
    results = json.loads((out / "results.json").read_text())
    stages = results["stages_resnet18"]
    for stage in ("decode_alone", "pillow_alone", "model_alone"):
        assert stages[stage]["images_per_s"] > 0, stage
    bench = results["bench_resnet18"]
    assert bench["pipeline_img_s"] > 0 and bench["idle_latency_ms"]["p50_ms"] > 0
    by_stage = bench["stages_ms_per_image"]
    assert {"read", "hash", "decode", "model", "write"} <= set(by_stage), by_stage
    assert by_stage["model"] > 0 and by_stage["decode"] > 0
    assert set(bench["process_rss_mib"]["end"]) >= {"watcher", "worker", "redis"}
    assert "passed" in (out / "cuda-tests.txt").read_text()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_killed_benchmark_takes_its_up_and_every_child_with_it(tmp_path: Path) -> None:
    """`timeout` (SIGTERM) or kill -9 of bench.run used to leave its `up`, Redis and workers
    running; the kernel's parent-death signal now stops `up`, which stops the rest."""
    import psutil

    from tests.helpers.pipeline import wait_until

    bench = subprocess.Popen(
        [
            sys.executable, "-m", "bench.run", "--out", str(tmp_path / "results"),
            "--work-dir", str(tmp_path / "w"), "--set", "TORCH_COMPILE=off",
            "--images", "100", "--repeat", "1", "--no-sweep", "--no-scale-out", "--no-naive",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        def up_started() -> bool:
            tree = psutil.Process(bench.pid).children(recursive=True)
            return any("up" in p.cmdline() and "inbox_classifier" in p.cmdline() for p in tree)

        wait_until(up_started, 240, "the benchmark's `up`", every=0.5)
        tree = psutil.Process(bench.pid).children(recursive=True)
        bench.kill()  # kill -9: no handler, no cleanup in bench.run itself
        bench.wait()
        _gone, alive = psutil.wait_procs(tree, timeout=60)
        assert not alive, [" ".join(p.cmdline()) for p in alive]
    finally:
        if bench.poll() is None:
            bench.kill()
