"""Tiled, overlapping segmentation inference for images of any size, batched.

Each tile contributes only its interior (``overlap // 2`` pixels from every edge that is not an image
border are dropped), and overlapping interiors are averaged. For a network whose receptive-field
radius is at most ``overlap // 2`` the result equals one forward pass over the whole image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["axis_origins", "predict_tiled", "whole_image_metrics"]


def axis_origins(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one axis: every ``stride``, plus a last tile flush with the end.

    Example:
        >>> axis_origins(300, 128, 96)
        [0, 96, 172]
    """
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def _pad_to(image: torch.Tensor, tile: int) -> torch.Tensor:
    """Pad ``(C, H, W)`` at the bottom/right so both sides are at least ``tile`` (reflect when possible)."""
    pad_h, pad_w = max(0, tile - image.shape[-2]), max(0, tile - image.shape[-1])
    if not pad_h and not pad_w:
        return image
    mode = "reflect" if pad_h < image.shape[-2] and pad_w < image.shape[-1] else "replicate"
    return F.pad(image[None], (0, pad_w, 0, pad_h), mode=mode)[0]


@torch.no_grad()
def predict_tiled(
    model: nn.Module,
    image: torch.Tensor,
    tile: int = 128,
    overlap: int = 32,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Logits ``(K, H, W)`` for a normalised image ``(C, H, W)`` of any size, from ``tile``-sized windows."""
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got overlap={overlap}, tile={tile}")
    height, width = image.shape[-2:]
    padded = _pad_to(image, tile)
    full_h, full_w = padded.shape[-2:]
    stride, margin = tile - overlap, overlap // 2
    windows = [(y, x) for y in axis_origins(full_h, tile, stride) for x in axis_origins(full_w, tile, stride)]
    total: torch.Tensor | None = None
    weight = torch.zeros(1, full_h, full_w)
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        batch = torch.stack([padded[:, y : y + tile, x : x + tile] for y, x in chunk]).to(device)
        logits = model(batch).float().cpu()
        if total is None:
            total = torch.zeros(logits.shape[1], full_h, full_w)
        for (y, x), out in zip(chunk, logits):
            top = 0 if y == 0 else margin
            left = 0 if x == 0 else margin
            bottom = tile if y + tile == full_h else tile - margin
            right = tile if x + tile == full_w else tile - margin
            total[:, y + top : y + bottom, x + left : x + right] += out[:, top:bottom, left:right]
            weight[:, y + top : y + bottom, x + left : x + right] += 1
        if on_batch is not None:
            on_batch(len(chunk))
    assert total is not None
    return (total / weight)[:, :height, :width]


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
    not the fixed grid of tiles.
    """
    from ..data.seg_transforms import normalize
    from .metrics import SegmentationMeter

    meter = SegmentationMeter(num_classes)
    was_training = model.training
    model.eval()
    for image, mask in zip(images, masks):
        chw = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
        logits = predict_tiled(model, normalize(chw, mean, std), tile, overlap, batch_size, device)
        meter.update(logits[None], torch.as_tensor(mask)[None])
    model.train(was_training)
    return meter.compute()
