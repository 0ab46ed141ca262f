"""Evaluation metrics against values computed by hand."""

from __future__ import annotations

import pytest
import torch

from gdzoo.training.metrics import ClassificationMeter, SegmentationMeter, confusion_matrix


def test_confusion_matrix() -> None:
    cm = confusion_matrix(torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 0, 2]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_classification_top1_top5_per_class() -> None:
    # 7 classes, 4 samples, split over two batches (accumulation).
    logits = torch.tensor([
        [9, 8, 7, 6, 5, 4, 3],  # true 0: top1 hit
        [9, 8, 7, 6, 5, 4, 3],  # true 4: top5 hit (rank 5), top1 miss
        [0, 0, 0, 0, 0, 1, 9],  # true 6: top1 hit
        [9, 8, 7, 6, 5, 4, 3],  # true 5: rank 6, no top5 hit
    ], dtype=torch.float)
    target = torch.tensor([0, 4, 6, 5])
    meter = ClassificationMeter(7, [f"c{i}" for i in range(7)])
    meter.update(logits[:2], target[:2])
    meter.update(logits[2:], target[2:])
    m = meter.compute()
    assert m["top1"] == pytest.approx(50.0)
    assert m["top5"] == pytest.approx(75.0)
    assert m["per_class"]["c0"] == 100.0 and m["per_class"]["c4"] == 0.0 and m["per_class"]["c6"] == 100.0
    assert m["mean_class_acc"] == pytest.approx((100 + 0 + 0 + 100) / 4)  # classes without samples are skipped
    assert m["samples"] == 4


def test_few_classes_have_no_top5() -> None:
    meter = ClassificationMeter(2)
    meter.update(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 0, 0]))
    m = meter.compute()
    assert "top5" not in m and m["top1"] == pytest.approx(200 / 3)


def test_segmentation_pixel_acc_dice_iou() -> None:
    target = torch.tensor([[[1, 1, 0, 0], [1, 1, 0, 0]]])  # 4 foreground pixels
    pred = torch.tensor([[[1, 0, 0, 0], [1, 1, 1, 0]]])    # tp=3, fp=1, fn=1, tn=3
    logits = torch.stack([1 - pred, pred], 1).float()        # (1, 2, 2, 4)
    meter = SegmentationMeter(2, ["background", "nucleus"])
    meter.update(logits, target)
    m = meter.compute()
    assert m["pixel_acc"] == pytest.approx(100 * 6 / 8)
    assert m["dice"] == pytest.approx(100 * 2 * 3 / (2 * 3 + 1 + 1))
    assert m["iou"] == pytest.approx(100 * 3 / (3 + 1 + 1))
    assert m["per_class"]["background"]["dice"] == pytest.approx(100 * 6 / 8)  # tp=3, fp=1, fn=1
    one_logit = SegmentationMeter(2)
    one_logit.update((pred.float() * 2 - 1)[:, None], target)  # (N, 1, H, W) logits: > 0 is foreground
    assert one_logit.compute()["dice"] == pytest.approx(m["dice"])


def test_multiclass_dice_averages_foreground_classes() -> None:
    target = torch.tensor([[0, 1, 2, 2]])
    pred = torch.tensor([[0, 1, 2, 1]])
    meter = SegmentationMeter(3)
    meter.update(torch.nn.functional.one_hot(pred, 3).permute(0, 2, 1)[..., None].float(), target[..., None])
    m = meter.compute()
    dice1, dice2 = 2 * 1 / (2 + 1), 2 * 1 / (2 + 1)  # class 1: tp1 fp1; class 2: tp1 fn1
    assert m["dice"] == pytest.approx(100 * (dice1 + dice2) / 2)
    assert m["iou"] == pytest.approx(100 * (0.5 + 0.5) / 2)
