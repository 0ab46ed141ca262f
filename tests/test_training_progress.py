"""Training into a log (stdout not a terminal) prints a progress line every ``output.log_every_s`` seconds: the right
step counts, the epoch's mean loss and parseable ETAs; none within the interval, none with ``--no-progress``, none on
a terminal (where tqdm's bar is the progress)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from gdzoo.training import ConfigError, load_recipe, train
from gdzoo.training.reporting import ProgressLines

REPO = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^epoch (\d+)/(\d+)  step (\d+)/(\d+)  ([\d.]+) img/s  loss ([\d.]+)  lr (\S+)  "
                  r"ETA epoch (\d+):(\d\d):(\d\d)  run (\d+):(\d\d):(\d\d)$")


def _tiny_run(out: Path, *overrides: str) -> None:
    """2 steps of 32 images per epoch (64 training images), on Fashion-MNIST."""
    recipe = load_recipe(REPO / "configs" / "tiny_fmnist.yaml", [
        "data.train_subset=64", "data.val_size=32", "data.test_subset=32", "data.batch_size=32", "train.device=cpu",
        f"output.dir={out}", "output.plots=false", *overrides])
    train(recipe)


def _seconds(hours: str, minutes: str, seconds: str) -> int:
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds)


def _progress_lines(out: str) -> list[re.Match]:
    return [m for m in map(LINE.match, out.splitlines()) if m]


def test_every_step_with_interval_zero(capsys, tmp_path: Path) -> None:
    _tiny_run(tmp_path, "train.epochs=2", "output.log_every_s=0")
    out = capsys.readouterr().out
    lines = _progress_lines(out)
    assert [(int(m[1]), int(m[2]), int(m[3]), int(m[4])) for m in lines] == [
        (1, 2, 1, 2), (1, 2, 2, 2), (2, 2, 1, 2), (2, 2, 2, 2)]
    for m in lines:
        epoch_eta, run_eta = _seconds(*m.groups()[7:10]), _seconds(*m.groups()[10:13])
        assert float(m[5]) > 0 and run_eta >= epoch_eta
    last = lines[-1]
    assert _seconds(*last.groups()[7:10]) == _seconds(*last.groups()[10:13]) == 0  # the run's last step: nothing left
    # the last line of an epoch shows that epoch's mean training loss, the one metrics.jsonl records
    rows = [__import__("json").loads(r) for r in (tmp_path / "tiny_fmnist" / "metrics.jsonl").read_text().splitlines()]
    assert [float(lines[1][6]), float(lines[3][6])] == pytest.approx([r["train_loss"] for r in rows], abs=6e-5)
    # each epoch's lines come before its summary line
    text = out.splitlines()
    assert text.index(lines[1][0]) < next(i for i, t in enumerate(text) if t.startswith("epoch 1/2  lr="))


def test_default_interval_prints_none_for_a_short_run(capsys, tmp_path: Path) -> None:
    start = time.monotonic()
    _tiny_run(tmp_path, "train.epochs=1")
    assert time.monotonic() - start < 30  # shorter than the default interval, so no line is due
    out = capsys.readouterr().out
    assert not _progress_lines(out) and "epoch 1/1  lr=" in out


def test_no_progress_prints_no_lines(capsys, tmp_path: Path) -> None:
    _tiny_run(tmp_path, "train.epochs=1", "output.log_every_s=0", "output.progress=false")
    assert not _progress_lines(capsys.readouterr().out)


def test_a_terminal_gets_no_lines() -> None:
    """On a real pseudo-terminal the lines stay off (tqdm's bar shows the progress there)."""
    main_fd, tty_fd = os.openpty()
    with os.fdopen(tty_fd, "w") as tty:
        lines = ProgressLines(0, epoch=0, epochs=1, steps_per_epoch=4, stream=tty)
        assert not lines.enabled and not lines.update(1, 32, 1.0, 0.1)
    os.close(main_fd)


def test_eta_from_a_fake_clock() -> None:
    """4 s per step: after 3 of 10 steps of epoch 2 of 4, 7 steps (28 s) are left in the epoch, 2 more epochs after."""
    import io

    ticks = iter([100.0, 112.0])
    stream = io.StringIO()
    lines = ProgressLines(5, epoch=1, epochs=4, steps_per_epoch=10, start_step=0, world_size=2, stream=stream,
                          clock=lambda: next(ticks))
    assert lines.update(3, 96, 0.5, 1e-3)
    m = LINE.match(stream.getvalue().strip())
    assert m and (m[1], m[2], m[3], m[4]) == ("2", "4", "3", "10")
    assert float(m[5]) == 16  # 96 images x 2 ranks in 12 s
    assert _seconds(*m.groups()[7:10]) == 28 and _seconds(*m.groups()[10:13]) == 28 + 2 * 10 * 4


def test_negative_interval_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"output.log_every_s must be >= 0 .* got -1"):
        load_recipe(REPO / "configs" / "tiny_fmnist.yaml", ["output.log_every_s=-1"])


def test_a_resumed_epoch_times_only_the_steps_run_here() -> None:
    """Resumed at step 5 of 10: 2 steps in 8 s are 4 s per step, 3 steps (12 s) left; images/s counts this process's."""
    import io

    ticks = iter([0.0, 8.0])
    stream = io.StringIO()
    lines = ProgressLines(0, epoch=0, epochs=1, steps_per_epoch=10, start_step=5, stream=stream,
                          clock=lambda: next(ticks))
    assert lines.update(7, 64, 0.5, 1e-3)
    m = LINE.match(stream.getvalue().strip())
    assert m and m[3] == "7" and float(m[5]) == 8
    assert _seconds(*m.groups()[7:10]) == _seconds(*m.groups()[10:13]) == 12
