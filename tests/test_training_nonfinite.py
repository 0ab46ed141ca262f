"""Non-finite training (issue 31, item 5): infinite recipe values are refused like NaN, and a NaN/inf loss stops the run
before the step, with a one-line error and a non-zero exit, leaving finite checkpoints behind."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml

from gdzoo.training import ConfigError
from gdzoo.training.checkpoint import load_checkpoint
from gdzoo.training.config import apply_overrides, recipe_from_dict
from gdzoo.training.distributed import DistInfo
from gdzoo.training.engine import Engine, LoopState, NonFiniteLossError, build_criterion

RECIPE = {
    "name": "nonfinite",
    "model": {"name": "ff_fmnist", "pretrained": False},
    "data": {"dataset": "fashion_mnist", "train_subset": 64, "val_size": 16, "test_subset": 16, "batch_size": 16},
    "optim": {"opt": "adam", "lr": 1e30},  # finite, but the first step makes the weights overflow
    "train": {"epochs": 1, "seed": 0, "checkpoint_every_steps": 1},
    "output": {"plots": False, "progress": False},
}


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
@pytest.mark.parametrize("key", ["optim.lr", "optim.weight_decay", "sched.warmup_epochs", "train.ema_decay"])
def test_non_finite_recipe_numbers_are_refused(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key} must be a finite number, got -?(inf|nan)"):
        recipe_from_dict(apply_overrides({}, [f"{key}={value}"]))


class _NanAfter(nn.Module):
    """A linear classifier whose output turns NaN from the ``n``-th call on (a loss that goes bad mid-epoch)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.fc, self.n, self.calls = nn.Linear(4, 3), n, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        y = self.fc(x)
        return y * float("nan") if self.calls >= self.n else y


def test_a_non_finite_loss_stops_before_the_step() -> None:
    torch.manual_seed(0)
    model = _NanAfter(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    info = DistInfo(device=torch.device("cpu"))
    engine = Engine(model, model, opt, sched, build_criterion("classification"), info, "classification",
                    show_progress=False)
    data = [(torch.randn(2, 4), torch.tensor([0, 1])) for _ in range(5)]
    state = LoopState()
    with pytest.raises(NonFiniteLossError,
                       match=r"the training loss is nan \(not finite\) at epoch 1, batch 3 \(step 3"):
        engine.train_one_epoch(data, state, steps_per_epoch=5)
    assert state.global_step == 2  # two good steps, none with the bad loss
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_cli_exits_non_zero_with_one_line_and_finite_checkpoints(tmp_path: Path) -> None:
    config = tmp_path / "nonfinite.yaml"
    config.write_text(yaml.safe_dump(RECIPE))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "gdzoo", "train", "-c", str(config), "--output",
                           str(tmp_path / "runs")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("gdzoo train:")]
    assert len(errors) == 1 and "(not finite)" in errors[0] and "Traceback" not in proc.stderr, proc.stderr
    run = tmp_path / "runs" / "nonfinite"
    assert not (run / "best.safetensors").exists() and not (run / "final_metrics.json").exists()
    if (run / "last.pth").exists():  # the step checkpoints before the bad loss hold finite weights
        state = load_checkpoint(run / "last.pth")
        assert all(math.isfinite(v) for t in state["model"].values()
                   if t.is_floating_point() for v in t.flatten().tolist())


def test_cli_refuses_an_infinite_learning_rate_like_nan(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "gdzoo", "train", "--set", "optim.lr=.inf", "--output", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "optim.lr must be a finite number, got inf" in proc.stderr, proc.stderr
    assert not any(tmp_path.iterdir())
