"""Background torch.compile: when it is allowed, and that a compiled classifier gives the same
answers as the eager one (a real compile by Inductor of a small real CNN)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch import nn

from worker.model.classifier import Classifier, compile_blocker
from worker.model.modelzoo import LoadedModel
from worker.model.preprocess import Preprocessing

CPU = torch.device("cpu")


def test_off_never_compiles() -> None:
    assert compile_blocker("off", CPU, torch.bfloat16) == "TORCH_COMPILE is off"


def test_auto_compiles_on_a_bf16_cpu_only() -> None:
    if not shutil.which("g++") and not shutil.which("c++"):
        pytest.skip("no C++ compiler here")
    assert compile_blocker("auto", CPU, torch.bfloat16) is None
    reason = compile_blocker("auto", CPU, None)
    assert reason is not None and "bf16" in reason


def test_on_compiles_in_fp32_too_unless_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    if not shutil.which("g++") and not shutil.which("c++"):
        pytest.skip("no C++ compiler here")
    assert compile_blocker("on", CPU, None) is None
    monkeypatch.setenv("TORCH_COMPILE_DISABLE", "1")
    assert compile_blocker("on", CPU, None) == "TORCH_COMPILE_DISABLE is set"


def test_no_compiler_means_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    reason = compile_blocker("on", CPU, None)
    assert reason is not None and "C++ compiler" in reason


def small_classifier() -> Classifier:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    loaded = LoadedModel("small", model, ["a", "b", "c", "d"], Preprocessing(resize=40, crop=32))
    return Classifier(1, loaded, CPU, None)


@pytest.mark.slow
def test_a_compiled_classifier_matches_the_eager_one_for_any_batch_size() -> None:
    if not shutil.which("g++") and not shutil.which("c++"):
        pytest.skip("no C++ compiler here")
    classifier = small_classifier()
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8) for n in (1, 3, 4)]
    eager = [classifier.predict(b, 4) for b in batches]

    assert classifier.compile_async([4, 1], mode="on")
    assert not classifier.compile_async([4, 1], mode="on"), "a second compile must not start"
    assert classifier.wait_compiled(600), f"compile ended {classifier.compile_state}"
    assert classifier._compiled is not None
    compiled = [classifier.predict(b, 4) for b in batches]  # 3: a size it was not warmed for
    for before, after in zip(eager, compiled, strict=True):
        for top_e, top_c in zip(before, after, strict=True):
            assert [t["label"] for t in top_e] == [t["label"] for t in top_c]
            for e, c in zip(top_e, top_c, strict=True):
                assert c["confidence"] == pytest.approx(e["confidence"], abs=1e-4)


def test_a_failed_compile_leaves_the_classifier_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    if not shutil.which("g++") and not shutil.which("c++"):
        pytest.skip("no C++ compiler here")

    def broken(*_args: object, **_kwargs: object) -> object:
        raise RuntimeError("inductor exploded")

    monkeypatch.setattr(torch, "compile", broken)
    classifier = small_classifier()
    batch = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    expected = classifier.predict(batch, 2)
    assert classifier.compile_async([2, 1], mode="on")
    assert not classifier.wait_compiled(60)
    assert classifier.compile_state == "failed" and classifier._compiled is None
    assert classifier.predict(batch, 2) == expected
