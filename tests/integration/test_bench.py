"""The benchmark harness (bench/) keeps working: one tiny run of the real thing, end to end.
Its figures are not checked here (speed targets live in the benchmark and docs/performance.md), only
that every phase ran on real parts and reported what it measured."""

from __future__ import annotations

import json
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
