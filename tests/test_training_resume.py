"""Exact resume: a run SIGKILLed mid-epoch (after a step checkpoint) and resumed ends with the weights of an
uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from gdzoo.training.checkpoint import load_checkpoint

RECIPE = {
    "name": "resume",
    "model": {"name": "gd_fmnist", "pretrained": False, "drop_rate": 0.2},
    "data": {"dataset": "fashion_mnist", "train_subset": 320, "val_size": 64, "test_subset": 64, "batch_size": 16},
    "augment": {"enabled": True, "scale": [0.7, 1.0], "ratio": [0.9, 1.1], "hflip": 0.5},
    "optim": {"opt": "adamw", "lr": 0.01, "weight_decay": 0.01},
    "sched": {"name": "cosine", "alpha": 0.1, "warmup_epochs": 0.3},
    "train": {"epochs": 2, "seed": 3, "deterministic": True, "checkpoint_every_steps": 3, "clip_grad": 5.0,
              "label_smoothing": 0.1, "ema": True, "ema_decay": 0.9},
    "output": {"plots": False, "progress": False},
}
STEPS_PER_EPOCH = 320 // 16


def _gdzoo(config: Path, output: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "gdzoo", "train", "-c", str(config), "--output", str(output),
                             *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_mid_epoch_then_resume_is_exact(tmp_path: Path) -> None:
    config = tmp_path / "resume.yaml"
    config.write_text(yaml.safe_dump(RECIPE))
    reference = _gdzoo(config, tmp_path / "a")  # uninterrupted, single-process data loading
    victim = _gdzoo(config, tmp_path / "b", "--workers", "2")  # same recipe, 2 loader workers
    last = tmp_path / "b" / "resume" / "last.pth"
    deadline = time.monotonic() + 240
    while not last.exists():
        assert victim.poll() is None, victim.communicate()[0]
        assert time.monotonic() < deadline, "no step checkpoint appeared"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(last)
    assert killed_at["epoch"] == 0 and 0 < killed_at["step_in_epoch"] < STEPS_PER_EPOCH, \
        "the kill did not land mid-epoch"
    assert not (tmp_path / "b" / "resume" / "metrics.jsonl").read_text().strip()

    resumed = _gdzoo(config, tmp_path / "b", "--resume", "--workers", "2", "--set", "output.export=true",
                     "--set", f"output.export_root={tmp_path / 'weights'}")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert f"resumed from {last}: epoch 1, batch {killed_at['step_in_epoch']}" in out
    ref_out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, ref_out

    a, b = load_checkpoint(tmp_path / "a" / "resume" / "last.pth"), load_checkpoint(last)
    assert a["global_step"] == b["global_step"] == 2 * STEPS_PER_EPOCH and a["epoch"] == b["epoch"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), f"ema {key}"
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert a["scheduler"] == b["scheduler"]
    rows_a = [json.loads(line) for line in (tmp_path / "a" / "resume" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(line) for line in (tmp_path / "b" / "resume" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows_b] == [0, 1]
    for ra, rb in zip(rows_a, rows_b):
        assert ra["train_loss"] == rb["train_loss"] and ra["val_loss"] == rb["val_loss"] and ra["lr"] == rb["lr"]
    # the resumed run's card says how to reproduce the run, not how it was interrupted
    card = next((tmp_path / "weights").glob("gd_fmnist.*/README.md")).read_text()
    reproduce = card.split("## Reproduce")[1].split("```")[1]
    assert "gdzoo train -c" in reproduce and "--workers 2" in reproduce and "--resume" not in reproduce
    assert "resume: null" in card and "resume: auto" not in card
