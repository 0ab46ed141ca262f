"""Learning-rate schedules against their closed forms, through a real optimizer and LambdaLR."""

from __future__ import annotations

import math

import pytest
import torch

from gdzoo.training.config import OptimConfig, SchedConfig
from gdzoo.training.optim import build_schedule, cosine_decay, create_optimizer, create_scheduler


def _lrs(cfg: SchedConfig, steps_per_epoch: int, epochs: int, lr: float = 0.1) -> list[float]:
    model = torch.nn.Linear(2, 2)
    optimizer = create_optimizer(model, OptimConfig(opt="sgd", lr=lr))
    scheduler = create_scheduler(optimizer, cfg, steps_per_epoch, epochs)
    out = []
    for _ in range(steps_per_epoch * epochs + 5):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def keras_cosine(k: int, k_max: int, alpha: float, lr0: float) -> float:
    return lr0 * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * min(k, k_max) / k_max)) + alpha)


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5])
def test_cosine_matches_keras_cosine_decay(alpha: float) -> None:
    lrs = _lrs(SchedConfig(name="cosine", alpha=alpha), steps_per_epoch=10, epochs=3)
    k_max = 30
    for k, lr in enumerate(lrs):
        assert lr == pytest.approx(keras_cosine(k, k_max, alpha, 0.1), rel=1e-12, abs=1e-15)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[k_max] == pytest.approx(0.1 * alpha) and lrs[-1] == pytest.approx(0.1 * alpha)
    assert max(lrs) <= 0.1 + 1e-12  # the paper's printed formula would start at 2*lr0 (see docs/training.md)


def test_cosine_with_explicit_decay_length_then_floor() -> None:
    lrs = _lrs(SchedConfig(name="cosine", alpha=0.2, decay_epochs=1.5), steps_per_epoch=10, epochs=3)
    for k, lr in enumerate(lrs):
        assert lr == pytest.approx(keras_cosine(k, 15, 0.2, 0.1), rel=1e-12)


def test_linear_warmup_then_cosine() -> None:
    lrs = _lrs(SchedConfig(name="cosine", alpha=0.0, warmup_epochs=0.5, warmup_start=0.1), steps_per_epoch=10, epochs=2)
    for k in range(5):
        assert lrs[k] == pytest.approx(0.1 * (0.1 + 0.9 * k / 5))
    for k in range(5, 20):
        assert lrs[k] == pytest.approx(keras_cosine(k - 5, 15, 0.0, 0.1), abs=1e-15)


def test_step_schedule() -> None:
    lrs = _lrs(SchedConfig(name="step", decay_epochs=1, gamma=0.5), steps_per_epoch=4, epochs=3)
    for k, lr in enumerate(lrs):
        assert lr == pytest.approx(0.1 * 0.5 ** (k // 4))


def test_constant_and_state_round_trip() -> None:
    assert set(_lrs(SchedConfig(name="constant"), 3, 2)) == {0.1}
    schedule = build_schedule(SchedConfig(name="cosine", alpha=0.1, warmup_epochs=1), 10, 5)
    assert (schedule.warmup_steps, schedule.decay_steps) == (10, 40)
    assert cosine_decay(20, 40, 0.1) == pytest.approx(0.55)
