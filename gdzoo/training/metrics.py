"""Metrics from accumulated counts (summable across ranks): top-1/top-5 and per-class accuracy; pixel accuracy, Dice/F1,
IoU."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["ClassificationMeter", "SegmentationMeter", "confusion_matrix"]


def confusion_matrix(target: torch.Tensor, pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(C, C)`` int64 counts, rows = true class, columns = predicted class."""
    target, pred = target.reshape(-1).long(), pred.reshape(-1).long()
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


class ClassificationMeter:
    """Accumulates top-k hits and a confusion matrix over batches of logits ``(N, C)``."""

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None, topk: int = 5) -> None:
        self.num_classes, self.k = int(num_classes), min(int(topk), int(num_classes))
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.counts = torch.zeros(2, dtype=torch.float64)  # [topk hits, samples]
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        logits, target = logits.detach().float().cpu(), target.detach().cpu()
        topk = logits.topk(self.k, dim=1).indices
        self.counts += torch.tensor([(topk == target[:, None]).any(1).sum().item(), len(target)], dtype=torch.float64)
        self.confusion += confusion_matrix(target, topk[:, 0], self.num_classes)

    def tensors(self) -> list[torch.Tensor]:
        """The state to all-reduce (sum) across ranks."""
        return [self.counts, self.confusion]

    def compute(self) -> dict[str, float | dict[str, float]]:
        """``top1``, ``top5`` (when there are more than 5 classes), ``mean_class_acc`` and ``per_class`` accuracy,
        in %."""
        total = self.confusion.sum().item()
        correct = self.confusion.diag().sum().item()
        support = self.confusion.sum(1).double()
        per_class = (self.confusion.diag().double() / support.clamp(min=1) * 100).tolist()
        seen = [acc for acc, n in zip(per_class, support.tolist()) if n > 0]
        result: dict[str, float | dict[str, float]] = {"top1": 100.0 * correct / max(total, 1)}
        if self.num_classes > self.k:
            result[f"top{self.k}"] = 100.0 * self.counts[0].item() / max(self.counts[1].item(), 1)
        result.update(mean_class_acc=sum(seen) / max(len(seen), 1), per_class=dict(zip(self.class_names, per_class)),
                      samples=int(total))
        return result


class SegmentationMeter:
    """Accumulates a pixel confusion matrix over logits ``(N, C, H, W)`` (or ``(N, 1, H, W)`` for one-logit binary)."""

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None) -> None:
        self.num_classes = max(int(num_classes), 2)
        self.class_names = list(class_names) if class_names else [str(i) for i in range(self.num_classes)]
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        logits = logits.detach().float()
        pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
        self.confusion += confusion_matrix(target.detach().cpu(), pred.cpu(), self.num_classes)

    def tensors(self) -> list[torch.Tensor]:
        return [self.confusion]

    def compute(self) -> dict[str, float | dict[str, float]]:
        """``pixel_acc``, and ``dice`` (= F1) / ``iou`` averaged over foreground classes (1..C-1), in %.

        Counts are pooled over all pixels of the set (not averaged per image); ``per_class`` holds
        every class's Dice and IoU.
        """
        cm = self.confusion.double()
        tp = cm.diag()
        fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
        dice = (2 * tp / (2 * tp + fp + fn).clamp(min=1) * 100).tolist()
        iou = (tp / (tp + fp + fn).clamp(min=1) * 100).tolist()
        fg = range(1, self.num_classes)
        return {
            "pixel_acc": 100.0 * tp.sum().item() / max(cm.sum().item(), 1),
            "dice": sum(dice[c] for c in fg) / len(fg),
            "iou": sum(iou[c] for c in fg) / len(fg),
            "per_class": {name: {"dice": d, "iou": i} for name, d, i in zip(self.class_names, dice, iou)},
            "pixels": int(cm.sum().item()),
        }
