"""Tiled, overlapping segmentation inference for images of any size, batched.

Each tile contributes only its interior (``overlap // 2`` pixels from every edge that is not an image
border are dropped), and overlapping interiors are averaged. For a network whose receptive-field
radius is at most ``overlap // 2`` the result equals one forward pass over the whole image.

``gdzoo predict`` runs it through :mod:`gdzoo.inference.tiling`; it lives here because the trainer's whole-image
validation (:func:`whole_image_metrics`) runs it too, and training sits below inference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ImageTiles", "TensorTiles", "axis_origins", "predict_tiled", "predict_tiled_rows", "whole_image_metrics"]


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


class TensorTiles:
    """Windows of a normalised ``(C, H, W)`` float image, padded at the bottom/right to at least one tile."""

    def __init__(self, image: torch.Tensor, tile: int) -> None:
        self.height, self.width = int(image.shape[-2]), int(image.shape[-1])
        self.padded = _pad_to(image, tile)

    @property
    def padded_size(self) -> tuple[int, int]:
        return int(self.padded.shape[-2]), int(self.padded.shape[-1])

    def window(self, y: int, x: int, size: int) -> torch.Tensor:
        return self.padded[:, y : y + size, x : x + size]


class ImageTiles:
    """Normalised float windows cut on demand from integer pixels ``(H, W, C)`` (uint8 / uint16, ``scale`` = white).

    Only one batch of windows is ever float32, so a 10000 x 10000 slide costs its 8- or 16-bit pixels, not
    4 bytes per value. Gray pixels are repeated to ``channels``; padding (reflect, else replicate) matches
    :class:`TensorTiles` on the same image.

    Example:
        >>> tiles = ImageTiles(np.full((40, 50, 1), 255, np.uint8), 255.0, (0.5,) * 3, (0.5,) * 3, channels=3, tile=64)
        >>> tiles.padded_size, tiles.window(0, 0, 64).shape, float(tiles.window(0, 0, 64).max())
        ((64, 64), torch.Size([3, 64, 64]), 1.0)
    """

    def __init__(self, pixels: np.ndarray, scale: float, mean: Sequence[float], std: Sequence[float], channels: int,
                 tile: int) -> None:
        if pixels.ndim != 3 or pixels.shape[-1] not in (1, channels):
            raise ValueError(f"pixels must be (H, W, 1) or (H, W, {channels}), got {tuple(pixels.shape)}")
        self.height, self.width = int(pixels.shape[0]), int(pixels.shape[1])
        pad_h, pad_w = max(0, tile - self.height), max(0, tile - self.width)
        if pad_h or pad_w:
            mode = "reflect" if pad_h < self.height and pad_w < self.width else "edge"
            pixels = np.pad(pixels, ((0, pad_h), (0, pad_w), (0, 0)), mode=mode)
        self.pixels, self.scale, self.channels = pixels, float(scale), int(channels)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    @property
    def padded_size(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])

    def window(self, y: int, x: int, size: int) -> torch.Tensor:
        part = torch.from_numpy(self.pixels[y : y + size, x : x + size].astype(np.float32)).permute(2, 0, 1)
        part = part / self.scale
        return (part.expand(self.channels, -1, -1) - self.mean) / self.std


def _kept_span(origin: int, tile: int, margin: int, full: int) -> tuple[int, int]:
    """``[start, stop)`` a tile at ``origin`` contributes along one axis: its interior, or up to an image border."""
    start = origin if origin == 0 else origin + margin
    return start, origin + tile if origin + tile == full else origin + tile - margin


def _coverage(origins: list[int], tile: int, margin: int, full: int) -> torch.Tensor:
    """How many tiles contribute to each position along one axis (the averaging weights factor per axis)."""
    count = torch.zeros(full)
    for origin in origins:
        start, stop = _kept_span(origin, tile, margin, full)
        count[start:stop] += 1
    return count


@torch.no_grad()
def predict_tiled_rows(
    model: nn.Module,
    image: torch.Tensor | TensorTiles | ImageTiles,
    tile: int = 128,
    overlap: int = 32,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(first_row, logits (K, rows, W))`` bands of the image's logits, top to bottom, as soon as they are final.

    Tiles go through the model ``batch_size`` at a time in row-major order; only the rows that later tiles
    can still reach are kept, so memory is one batch of activations plus about ``tile + batch_size * stride``
    rows of logits, whatever the image height. Concatenated, the bands are exactly :func:`predict_tiled`.
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got overlap={overlap}, tile={tile}")
    source = TensorTiles(image, tile) if isinstance(image, torch.Tensor) else image
    height, width = source.height, source.width
    full_h, full_w = source.padded_size
    stride, margin = tile - overlap, overlap // 2
    ys, xs = axis_origins(full_h, tile, stride), axis_origins(full_w, tile, stride)
    rows = {y: _kept_span(y, tile, margin, full_h) for y in ys}
    cols = {x: _kept_span(x, tile, margin, full_w) for x in xs}
    row_weight, col_weight = _coverage(ys, tile, margin, full_h), _coverage(xs, tile, margin, full_w)
    windows = [(y, x) for y in ys for x in xs]
    band: torch.Tensor | None = None  # running sums of rows [base, base + band.shape[1])
    base = 0
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        logits = model(torch.stack([source.window(y, x, tile) for y, x in chunk]).to(device)).float().cpu()
        reach = max(rows[y][1] for y, _ in chunk) - base
        if band is None:
            band = torch.zeros(logits.shape[1], reach, full_w)
        elif band.shape[1] < reach:
            band = torch.cat([band, band.new_zeros(band.shape[0], reach - band.shape[1], full_w)], 1)
        for (y, x), out in zip(chunk, logits):
            (top, bottom), (left, right) = rows[y], cols[x]
            band[:, top - base : bottom - base, left:right] += out[:, top - y : bottom - y, left - x : right - x]
        if on_batch is not None:
            on_batch(len(chunk))
        final = rows[windows[start + batch_size][0]][0] if start + batch_size < len(windows) else full_h
        if final > base:
            done = band[:, : final - base] / (row_weight[base:final, None] * col_weight[None, :])
            if base < height:
                yield base, done[:, : min(final, height) - base, :width]
            band, base = band[:, final - base :].clone(), final


@torch.no_grad()
def predict_tiled(
    model: nn.Module,
    image: torch.Tensor | TensorTiles | ImageTiles,
    tile: int = 128,
    overlap: int = 32,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Logits ``(K, H, W)`` for a normalised image ``(C, H, W)`` (or an :class:`ImageTiles`) of any size."""
    out: torch.Tensor | None = None
    for first, logits in predict_tiled_rows(model, image, tile, overlap, batch_size, device, on_batch):
        if out is None:
            source_h = image.shape[-2] if isinstance(image, torch.Tensor) else image.height
            out = torch.empty(logits.shape[0], source_h, logits.shape[2])
        out[:, first : first + logits.shape[1]] = logits
    assert out is not None
    return out


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
    from ..data.seg_transforms import normalize
    from .metrics import SegmentationMeter

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
