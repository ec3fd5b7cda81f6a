"""bench.run's summary: medians over the alternating runs, the ratios the targets are set
on, and which targets the run met."""

from __future__ import annotations

from typing import Any

from bench.harness import median

TARGETS = {
    "pipeline_over_ceiling": 0.90,
    "pipeline_over_naive": 3.0,
    "idle_p50_ms": 100.0,
    "idle_p95_ms": 250.0,
}


def summarise(
    pairs: list[dict[str, Any]],
    best: dict[str, Any],
    best_cfg: tuple[int, int, int, int],
    idle_latency: dict[str, Any],
) -> dict[str, Any]:
    """Medians over ``pairs`` (one ceiling run and one pipeline burst each) of what the
    targets are set on, with the sweep's best ceiling for scale."""
    c_med = median([x["ceiling"]["images_per_s"] for x in pairs])
    p_med = median([x["pipeline"]["images_per_s"] for x in pairs])
    ratio_med = median(
        [x["pipeline"]["images_per_s"] / x["ceiling"]["images_per_s"] for x in pairs]
    )
    lat = {
        k: median([x["pipeline"]["latency"][k] for x in pairs])
        for k in ("p50_ms", "p95_ms", "p99_ms")
    }
    summary: dict[str, Any] = {
        "ceiling_img_s": round(c_med, 2),
        "ceiling_best_sweep_img_s": best["images_per_s"],
        "ceiling_best_config": dict(
            zip(("batch_size", "decode", "torch", "streams"), best_cfg, strict=True)
        ),
        "pipeline_img_s": round(p_med, 2),
        "pipeline_over_ceiling": round(ratio_med, 3),
        "pipeline_over_best_sweep": round(p_med / best["images_per_s"], 3),
        # CPU time per image (all of the pipeline's processes vs the ceiling's): how much work
        # the pipeline adds, whatever the speed the machine happened to run at.
        "cpu_ms_per_image": {
            "ceiling": median([x["ceiling"]["cpu_ms_per_image"] for x in pairs]),
            "pipeline": median([pipeline_cpu_ms(x["pipeline"]) for x in pairs]),
        },
        "burst_latency_ms": lat,
        "idle_latency_ms": idle_latency,
        # Where a pipeline image's time goes (summed over threads), from the workers' events.
        "stages_ms_per_image": {
            k: median([x["pipeline"]["stages_ms_per_image"].get(k, 0.0) for x in pairs])
            for k in pairs[0]["pipeline"]["stages_ms_per_image"]
        },
    }
    if pairs[0]["pipeline"]["gpu"]:
        summary["gpu_utilisation_mean_pct"] = median(
            [x["pipeline"]["gpu"]["utilisation_mean_pct"] for x in pairs]
        )
    if "two_workers" in pairs[0]:
        summary["two_workers_img_s"] = round(
            median([x["two_workers"]["images_per_s"] for x in pairs]), 2
        )
        summary["two_over_one_worker"] = round(
            median(
                [x["two_workers"]["images_per_s"] / x["pipeline"]["images_per_s"] for x in pairs]
            ),
            3,
        )
    if "naive" in pairs[0]:
        summary["naive_img_s"] = round(median([x["naive"]["images_per_s"] for x in pairs]), 2)
        summary["naive_cpu_ms_per_image"] = median([pipeline_cpu_ms(x["naive"]) for x in pairs])
        summary["pipeline_over_naive"] = round(
            median([x["pipeline"]["images_per_s"] / x["naive"]["images_per_s"] for x in pairs]),
            2,
        )
    return summary


def pipeline_cpu_ms(burst: dict[str, Any]) -> float:
    """CPU ms per image over a burst, summed over the pipeline's processes (not the bench's)."""
    cpu = sum(v for k, v in burst["cpu"]["cpu_s"].items() if k != "bench")
    return round(cpu * 1000 / burst["images"], 2)


def targets_met(summary: dict[str, Any]) -> dict[str, bool]:
    met = {
        "pipeline_over_ceiling": summary["pipeline_over_ceiling"]
        >= TARGETS["pipeline_over_ceiling"]
    }
    if "pipeline_over_naive" in summary:
        met["pipeline_over_naive"] = (
            summary["pipeline_over_naive"] >= TARGETS["pipeline_over_naive"]
        )
    idle = summary["idle_latency_ms"]
    met["idle_p50"] = idle["p50_ms"] <= TARGETS["idle_p50_ms"]
    met["idle_p95"] = idle["p95_ms"] <= TARGETS["idle_p95_ms"]
    return met
