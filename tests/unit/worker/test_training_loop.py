"""The training loop's schedule pieces on a tiny model: the one-cycle factor, early stopping
that waits out the first third of the plan, the planned epochs under a deadline, the weight
average that is judged and kept, and the recipe's choices against the user's settings."""

from __future__ import annotations

import itertools
import math
import time

import pytest
import torch
from torch import nn

from contract.settings import Settings
from worker.model.modelzoo import (
    IMAGENET_STEM,
    SMALL_STEM,
    SMALL_STEM_STRIDE2,
    get_model,
    use_small_stem,
)
from worker.model.preprocess import Preprocessing
from worker.training.detail import ContentSize
from worker.training.loop import TrainConfig, fit
from worker.training.plan import FINAL_MAP, STEMS, TrainPlan, plan
from worker.training.recipe import SCRATCH_PATIENCE, ema_decay_for, recipe_config
from worker.training.schedule import OneCycle


def batches(seed: int, n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g)) for _ in range(n)
    ]


def test_one_cycle_warms_up_then_anneals_to_nearly_zero() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    cycle = OneCycle(optimizer, warm_steps=10, total_steps=None)
    assert cycle.factor(0) == pytest.approx(OneCycle.START)
    assert cycle.factor(10) == 1.0 and cycle.factor(500) == 1.0  # not planned yet: flat
    cycle.plan(110)
    assert cycle.factor(10) == pytest.approx(1.0)
    assert cycle.factor(60) == pytest.approx((1 + OneCycle.END) / 2, rel=1e-3)
    assert cycle.factor(110) == pytest.approx(OneCycle.END)
    rates = [cycle.factor(step) for step in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(rates))


def test_early_stopping_waits_for_the_first_third_of_the_plan() -> None:
    """Validation never improves after epoch 1 (the rate is 0), patience is 1: without the
    rule the run would stop at epoch 2; with it, a plan of 9 epochs runs 4, one of 30 runs 11."""
    frozen_val = batches(1)

    def run(schedule: str, epochs: int) -> int:
        model = nn.Linear(4, 2)
        cfg = TrainConfig(epochs=epochs, lr=0.0, patience=1, schedule=schedule)
        result = fit(
            model,
            cfg,
            train_batches=lambda _epoch: batches(2),
            val_batches=lambda: frozen_val,
            prepare_train=lambda x: x,
            prepare_val=lambda x: x,
            device=torch.device("cpu"),
            steps_per_epoch=4,
        )
        assert result.stopped_early
        return len(result.history)

    assert run("step", 9) == 4
    assert run("onecycle", 9) == 4
    assert run("step", 30) == 11


def test_the_deadline_plans_the_epochs_and_the_average_is_what_is_kept() -> None:
    model = nn.Linear(4, 2)
    cfg = TrainConfig(epochs=200, lr=0.1, patience=1000, schedule="onecycle", ema_decay=0.5)
    slow = [0.0]

    def train(_epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        time.sleep(0.1)
        slow[0] += 1
        return batches(3)

    result = fit(
        model,
        cfg,
        train_batches=train,
        val_batches=lambda: batches(4),
        prepare_train=lambda x: x,
        prepare_val=lambda x: x,
        device=torch.device("cpu"),
        deadline=time.monotonic() + 1.2,
        steps_per_epoch=4,
    )
    assert result.stopped_by_budget and 2 <= result.planned_epochs < 200
    assert len(result.history) == result.planned_epochs
    assert result.history[-1]["planned_epochs"] == result.planned_epochs
    assert result.history[-1]["lr"] < 0.1 * 0.01  # annealed to the end of the plan
    # The kept weights are the average's (a plain copy of the last step's would differ).
    assert set(result.best["model"]) == set(model.state_dict())


def test_the_recipe_leaves_what_the_user_set() -> None:
    plan = TrainPlan("full", "", Preprocessing(32, 32), "", SMALL_STEM, "", from_scratch=True)
    base = TrainConfig.from_settings(Settings(redis_url=None))
    chosen = recipe_config(Settings(redis_url=None), plan, base)
    assert (chosen.optimizer, chosen.schedule, chosen.batch_size) == ("adamw", "onecycle", 64)
    assert chosen.label_smoothing == 0.1 and chosen.ema_decay is not None
    assert chosen.patience == SCRATCH_PATIENCE and chosen.epochs == 200
    given = Settings(redis_url=None, train_lr=0.05, train_epochs=7, train_batch_size=16)
    mine = recipe_config(given, plan, TrainConfig.from_settings(given))
    assert (mine.optimizer, mine.lr, mine.epochs, mine.batch_size) == ("sgd", 0.05, 7, 16)
    assert mine.schedule == "onecycle"  # the schedule is the recipe's
    assert 0.9 <= ema_decay_for(1) < ema_decay_for(36) < ema_decay_for(10_000) <= 0.999


@pytest.mark.parametrize(
    ("stem", "stride", "side_after"), [(SMALL_STEM, 1, 32), (SMALL_STEM_STRIDE2, 2, 16)]
)
def test_the_small_stems_keep_the_picture_large(stem: str, stride: int, side_after: int) -> None:
    model = get_model("resnet18", weights=None)
    use_small_stem(model, stem)
    assert model.conv1.stride == (stride, stride) and isinstance(model.maxpool, nn.Identity)
    x = torch.zeros(1, 3, 32, 32)
    after = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    assert after.shape[-1] == side_after
    assert model(x).shape == (1, 1000)
    assert math.prod(after.shape) > 0


def _content(side: int) -> ContentSize:
    return ContentSize(side, side, f"{side} px of detail")


@pytest.mark.parametrize(
    ("content", "stem"),
    [
        (28, SMALL_STEM),
        (40, SMALL_STEM),
        (64, SMALL_STEM_STRIDE2),
        (100, SMALL_STEM_STRIDE2),
        (128, IMAGENET_STEM),
        (224, IMAGENET_STEM),
    ],
)
def test_the_stem_is_the_cheapest_that_leaves_a_four_pixel_map_before_the_head(
    content: int, stem: str
) -> None:
    cpu, imagenet = torch.device("cpu"), Preprocessing(resize=232, crop=224)
    resnet = get_model("resnet18", weights=None)
    chosen = plan("auto", cpu, False, imagenet, _content(content), None, resnet, IMAGENET_STEM)
    assert chosen.stem == stem and chosen.from_scratch, chosen.stem_reason
    side = chosen.preprocessing.crop
    stride = dict(STEMS)[stem]
    assert side // stride >= FINAL_MAP, "the last map is at least 4x4"
    cheaper = [s for s, st in STEMS if st > stride]
    assert all(side // dict(STEMS)[s] < FINAL_MAP for s in cheaper), "and no cheaper stem does"


def test_pretrained_weights_and_other_networks_keep_their_stem() -> None:
    cpu, imagenet = torch.device("cpu"), Preprocessing(resize=232, crop=224)
    resnet = get_model("resnet18", weights=None)
    pretrained = plan("auto", cpu, True, imagenet, _content(28), None, resnet, IMAGENET_STEM)
    assert pretrained.stem == IMAGENET_STEM and not pretrained.from_scratch
    other = plan(
        "auto",
        cpu,
        False,
        imagenet,
        _content(28),
        None,
        get_model("mobilenet_v3_small"),
        "imagenet",
    )
    assert other.stem == IMAGENET_STEM and "no ResNet stem" in other.stem_reason
