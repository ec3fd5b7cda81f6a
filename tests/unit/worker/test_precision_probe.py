"""The CPU's precision is chosen by measuring the model, not by the CPU's flags: bf16 only where
it measured faster than fp32 by the margin; the answer is cached per machine and model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from worker.model import precision_probe
from worker.model.precision_probe import MARGIN, Probe, cpu_precision, measure


def _tiny() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1)
    )


def test_a_real_measurement_names_both_rates_and_picks_the_faster() -> None:
    probe = measure(_tiny(), 32)
    assert probe.fp32_img_s > 0 and probe.bf16_img_s > 0
    assert probe.chosen == ("bf16" if probe.bf16_img_s > probe.fp32_img_s * MARGIN else "fp32")
    assert "fp32" in probe.summary() and "bf16" in probe.summary()


@pytest.mark.parametrize(("fp32", "bf16", "chosen"), [(45.0, 14.0, "fp32"), (40.0, 120.0, "bf16")])
def test_the_choice_follows_the_figures_and_is_measured_once_per_machine_and_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fp32: float, bf16: float, chosen: str
) -> None:
    calls: list[int] = []
    rates = {None: fp32, torch.bfloat16: bf16}

    def fake_rate(_model: torch.nn.Module, _crop: int, dtype: torch.dtype | None) -> float:
        calls.append(1)
        return rates[dtype]

    monkeypatch.setattr(precision_probe, "_rate", fake_rate)
    first = cpu_precision(_tiny(), "tiny", 32, tmp_path)
    again = cpu_precision(_tiny(), "tiny", 32, tmp_path)
    assert first == again and first.chosen == chosen and len(calls) == 2  # cached
    other = cpu_precision(_tiny(), "tiny", 64, tmp_path)  # another input size: measured anew
    assert len(calls) == 4 and isinstance(other, Probe)
    assert (tmp_path / precision_probe.PROBE_FILE).exists()
