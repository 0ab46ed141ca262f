"""Segmentation scores of whole images predicted tile by tile, as ``gdzoo predict`` would (the trainer's validation)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..data.seg_transforms import normalize
from ..inference.tiling import predict_tiled
from .metrics import SegmentationMeter

__all__ = ["whole_image_metrics"]


@torch.no_grad()
def whole_image_metrics(
    model: nn.Module,
    images: Sequence,
    masks: Sequence,
    mean: Sequence[float],
    std: Sequence[float],
    tile: int = 128,
    overlap: int = 32,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    num_classes: int = 2,
) -> dict:
    """Pixel accuracy, Dice and IoU of ``predict_tiled`` over whole images, pooled over all their pixels.

    ``images`` are ``(H, W, C)`` uint8 arrays and ``masks`` ``(H, W)`` integer label arrays (as held by
    :class:`gdzoo.data.segmentation.SegmentationTiles`); this scores what a user of ``gdzoo predict`` gets,
    not the fixed grid of tiles. ``per_image_confusion`` holds each image's pixel confusion matrix (rows: true
    class), so that subsets (e.g. one organ) can be pooled later.
    """
    meter = SegmentationMeter(num_classes)
    per_image = []
    was_training = model.training
    model.eval()
    for image, mask in zip(images, masks):
        chw = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
        logits = predict_tiled(model, normalize(chw, mean, std), tile, overlap, batch_size, device)
        one = SegmentationMeter(num_classes)
        one.update(logits[None], torch.as_tensor(mask)[None])
        meter.confusion += one.confusion
        per_image.append(one.confusion.tolist())
    model.train(was_training)
    return meter.compute() | {"per_image_confusion": per_image}
