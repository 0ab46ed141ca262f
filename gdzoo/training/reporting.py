"""What a person reads: tqdm bars, ``metrics.jsonl`` + CSV, loss/accuracy curves, a summary table, segmentation figures."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .._io import atomic_write, atomic_write_text

__all__ = ["MetricsLog", "format_summary", "plot_curves", "plot_segmentation_examples", "progress", "scalar_metrics"]


def progress(iterable: Iterable, total: int | None, desc: str, enabled: bool, initial: int = 0) -> tqdm:
    """A tqdm bar (loss/img/s postfix, ETA) on a terminal; silent on non-primary ranks, when disabled or piped."""
    return tqdm(iterable, total=total, desc=desc, disable=None if enabled else True, initial=initial, dynamic_ncols=True,
                leave=False, mininterval=0.5)


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
