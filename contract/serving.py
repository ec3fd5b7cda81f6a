"""How a version is served, in words: one wording for `status`, `models --long` and the web
app's Models page. ``serving`` is what model_versions.serving records: the summary of the
version's ONNX artifacts (worker.onnx_backend.summary) and which backend a worker last served it
with, and why (worker.serving)."""

from __future__ import annotations

from typing import Any


def describe_serving(serving: dict[str, Any] | None) -> str:
    if not serving:
        return "no worker has served it yet"
    serves, why = serving.get("serves"), serving.get("why")
    if serves is None:  # built by the training run; no worker has loaded it yet
        serves = f"onnxruntime {serving.get('precision', 'fp32')} (when a CPU worker loads it)"
        why = serving.get("int8_reason")
    text = f"{serves} ({why})" if why else str(serves)
    diff = serving.get("int8_max_confidence_diff")
    if "int8" in str(serves) and diff is not None:
        text += f"; confidences within {diff:.4f} of fp32"
    return text
