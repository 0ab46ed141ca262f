"""What a person reads: tqdm bars, ``metrics.jsonl`` + CSV, loss/accuracy curves, a summary table,
segmentation figures."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch
from tqdm.auto import tqdm

from .._io import atomic_write, atomic_write_text

__all__ = ["MetricsLog", "ProgressLines", "format_duration", "format_summary", "plot_curves",
           "plot_segmentation_examples", "progress", "scalar_metrics"]


def progress(iterable: Iterable, total: int | None, desc: str, enabled: bool, initial: int = 0) -> tqdm:
    """A tqdm bar (loss/img/s postfix, ETA) on a terminal; silent on non-primary ranks, when disabled or piped."""
    return tqdm(iterable, total=total, desc=desc, disable=None if enabled else True, initial=initial,
                dynamic_ncols=True, leave=False, mininterval=0.5)


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` of a duration in seconds, rounded to whole seconds (hours grow past 24).

    Example:
        >>> format_duration(3725.4), format_duration(0.2), format_duration(90061)
        ('1:02:05', '0:00:00', '25:01:01')
    """
    whole = max(0, round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


class ProgressLines:
    """A progress line every ``every_s`` seconds of wall time while an epoch trains, when ``stream`` (stdout) is not a
    terminal: a log file gets step/steps, images/s, mean loss, lr and the ETAs of the epoch and the run (tqdm's bar
    goes to stderr and shows on a terminal only). ``every_s=None`` prints none, ``0`` one per step; nothing is printed
    before ``every_s`` has passed.

    The ETAs extrapolate this epoch's time per step (since it started, or resumed, in this process) over the steps
    left; the run's counts training steps only (validation and the final evaluation come on top).

    Example:
        >>> ticks = iter([0.0, 10.0, 20.0])
        >>> out = io.StringIO()
        >>> lines = ProgressLines(15, epoch=0, epochs=3, steps_per_epoch=10, stream=out, clock=lambda: next(ticks))
        >>> lines.update(step_in_epoch=1, samples=32, loss=2.3, lr=0.01), lines.update(2, 64, 2.1, 0.01)
        (False, True)
        >>> print(out.getvalue().strip())
        epoch 1/3  step 2/10  3.2 img/s  loss 2.1000  lr 1.00e-02  ETA epoch 0:01:20  run 0:04:40
    """

    def __init__(self, every_s: float | None, epoch: int, epochs: int, steps_per_epoch: int, start_step: int = 0,
                 world_size: int = 1, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.every_s = every_s
        self.enabled = every_s is not None and not _is_terminal(self.stream)
        self.epoch, self.epochs, self.steps_per_epoch = epoch, max(epochs, epoch + 1), steps_per_epoch
        self.start_step, self.world_size, self.clock = start_step, world_size, clock
        self.start = self.last = clock() if self.enabled else 0.0

    def update(self, step_in_epoch: int, samples: int, loss: float, lr: float) -> bool:
        """After a step: ``step_in_epoch`` steps of the epoch done, ``samples`` images seen by this rank since this
        object started, ``loss`` the epoch's mean so far. Prints (and returns True) when ``every_s`` has passed."""
        if not self.enabled:
            return False
        now = self.clock()
        if now - self.last < (self.every_s or 0.0):
            return False
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        per_step = elapsed / max(step_in_epoch - self.start_step, 1)
        epoch_left = max(self.steps_per_epoch - step_in_epoch, 0) * per_step
        run_left = epoch_left + (self.epochs - self.epoch - 1) * self.steps_per_epoch * per_step
        rate = samples * self.world_size / elapsed
        print(f"epoch {self.epoch + 1}/{self.epochs}  step {step_in_epoch}/{self.steps_per_epoch}  "
              f"{rate:.{1 if rate < 10 else 0}f} img/s  loss {loss:.4f}  lr {lr:.2e}  "
              f"ETA epoch {format_duration(epoch_left)}  run {format_duration(run_left)}", file=self.stream, flush=True)
        return True


def scalar_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric entries of a metrics dict (per-class tables dropped), keys prefixed."""
    return {f"{prefix}{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class MetricsLog:
    """Per-epoch rows appended to ``metrics.jsonl`` and mirrored to ``metrics.csv``."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.jsonl = Path(folder) / "metrics.jsonl"
        self.csv = Path(folder) / "metrics.csv"

    def rows(self) -> list[dict[str, Any]]:
        if not self.jsonl.is_file():
            return []
        return [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]

    def truncate(self, before_epoch: int) -> None:
        """Keep only rows of epochs ``< before_epoch`` (a resumed run replays the later ones)."""
        kept = [r for r in self.rows() if r.get("epoch", 0) < before_epoch]
        atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in kept))
        self._write_csv(kept)

    def append(self, row: Mapping[str, Any]) -> None:
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(dict(row)) + "\n")
        self._write_csv(self.rows())

    def _write_csv(self, rows: Sequence[Mapping[str, Any]]) -> None:
        columns: list[str] = []
        for row in rows:
            columns += [k for k in row if k not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.csv, buffer.getvalue())


def _save_figure(fig: Any, path: str | os.PathLike) -> Path:
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


def plot_curves(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, metric: str) -> Path | None:
    """Loss (train / val) and ``metric`` (train / val) per epoch, side by side."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] + 1 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], metric, metric)):
        for split, style in (("train", "-o"), ("val", "-s")):
            values = [(e, r[f"{split}_{key}"]) for e, r in zip(epochs, rows) if r.get(f"{split}_{key}") is not None]
            if values:
                ax.plot(*zip(*values), style, label=split, markersize=4)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save_figure(fig, path)


def plot_segmentation_examples(images: torch.Tensor, masks: torch.Tensor, preds: torch.Tensor, mean: Sequence[float],
                               std: Sequence[float], path: str | os.PathLike) -> Path:
    """Rows of input / ground truth / prediction, like the paper's Fig. 2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
    mean_t = torch.tensor(mean).view(-1, 1, 1)
    std_t = torch.tensor(std).view(-1, 1, 1)
    for i in range(n):
        img = (images[i].float().cpu() * std_t + mean_t).clamp(0, 1).permute(1, 2, 0).squeeze(-1).numpy()
        for ax, data, title in ((axes[i, 0], img, "input"), (axes[i, 1], masks[i].cpu().numpy(), "ground truth"),
                                (axes[i, 2], preds[i].cpu().numpy(), "prediction")):
            ax.imshow(data, cmap="gray" if data.ndim == 2 else None, interpolation="nearest")
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title)
    return _save_figure(fig, path)


def format_summary(rows: Sequence[tuple[str, Any]], title: str = "summary") -> str:
    """A two-column text table."""
    cells = [(str(k), f"{v:.2f}" if isinstance(v, float) else str(v)) for k, v in rows]
    width = max([len(k) for k, _ in cells] + [len(title)])
    value_width = max([len(v) for _, v in cells] + [5])
    line = "+" + "-" * (width + 2) + "+" + "-" * (value_width + 2) + "+"
    out = [line, f"| {title:<{width}} | {'':<{value_width}} |", line]
    out += [f"| {k:<{width}} | {v:<{value_width}} |" for k, v in cells]
    out.append(line)
    return "\n".join(out)
