"""Segmentation folders (``images/`` + ``masks/``, or TNBC's ``Slide_XX/`` + ``GT_XX/``), split by image,
cut into tiles."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from .classification import IMG_EXTENSIONS, pil_mode
from .images import ImageReadError, describe_read_error, read_image
from .seg_transforms import PairedAugment, normalize
from .splits import resolve_count, seeded_permutation

__all__ = ["SegPair", "SegmentationTiles", "find_segmentation_pairs", "fold_assignment", "image_strata", "split_pairs",
           "tile_origins"]

_LAYOUTS = (
    "expected either ROOT/images/<id>.png + ROOT/masks/<id>.png (binary 0/255 or label PNGs, same size), "
    "or the TNBC layout ROOT/Slide_XX/<name>.png + ROOT/GT_XX/<name>.png"
)


@dataclass(frozen=True)
class SegPair:
    """One annotated image: its id, image and mask files, and its group (slide/patient) for splitting."""

    id: str
    image: Path
    mask: Path
    group: str


def _images_in(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS}


def find_segmentation_pairs(root: str | os.PathLike) -> list[SegPair]:
    """Every (image, mask) pair under ``root``, in either supported layout; clear errors otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"segmentation folder {root} does not exist; {_LAYOUTS}")
    pairs: list[SegPair] = []
    if (root / "images").is_dir():
        if not (root / "masks").is_dir():
            raise FileNotFoundError(f"{root} has images/ but no masks/ folder; {_LAYOUTS}")
        images, masks = _images_in(root / "images"), _images_in(root / "masks")
        for stem, path in images.items():
            mask = masks.get(stem) or masks.get(f"{stem}_mask")
            if mask is None:
                raise FileNotFoundError(f"image {path} has no mask masks/{stem}.png; {_LAYOUTS}")
            pairs.append(SegPair(stem, path, mask, stem))
    else:
        for slide in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("Slide_")):
            gt = root / f"GT_{slide.name[len('Slide_'):]}"
            if not gt.is_dir():
                raise FileNotFoundError(f"{slide} has no matching ground-truth folder {gt.name}; {_LAYOUTS}")
            masks = _images_in(gt)
            for stem, path in _images_in(slide).items():
                if stem not in masks:
                    raise FileNotFoundError(f"image {path} has no mask {gt.name}/{stem}.png; {_LAYOUTS}")
                pairs.append(SegPair(f"{slide.name}/{stem}", path, masks[stem], slide.name))
    if not pairs:
        raise FileNotFoundError(f"no image/mask pairs found in {root}; {_LAYOUTS}")
    return pairs


def _index_column(root: Path, column: str) -> dict[str, str] | None:
    """``{id: value}`` of one column of ``root/index.csv`` (MoNuSeg), or None when there is no such file/column."""
    index = root / "index.csv"
    if not index.is_file():
        return None
    with open(index, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or column not in rows[0] or "id" not in rows[0]:
        return None
    return {row["id"]: row[column].strip() for row in rows}


def _suggested_test_ids(root: Path) -> set[str] | None:
    """Ids marked ``test`` in ``root/index.csv``'s ``split_suggestion`` column (MoNuSeg), if any."""
    column = _index_column(root, "split_suggestion")
    return None if column is None else {i for i, split in column.items() if split == "test"}


def image_strata(units: Sequence[str], root: str | os.PathLike) -> dict[str, str]:
    """``{unit: stratum}``: the organ of each image from ``index.csv`` (``*`` marks dropped), else one stratum."""
    organs = _index_column(Path(root), "organ") or {}
    return {u: organs.get(u, "").rstrip("*") or "all" for u in units}


def fold_assignment(units: Sequence[str], strata: dict[str, str], folds: int, seed: int = 0) -> dict[str, int]:
    """``{unit: fold}`` for k-fold cross-validation, stratified: each stratum (organ) is dealt round-robin over
    the folds in a seeded order, continuing where the previous stratum stopped, so folds differ in size by
    at most one and every organ is spread as evenly as its count allows.

    Example:
        >>> units = [f"img{i}" for i in range(7)]
        >>> folds = fold_assignment(units, {u: "a" if i < 4 else "b" for i, u in enumerate(units)}, 3)
        >>> sorted(list(folds.values()).count(k) for k in range(3))
        [2, 2, 3]
    """
    if not 2 <= folds <= len(units):
        raise ValueError(f"folds must be between 2 and the number of images ({len(units)}), got {folds}")
    by_stratum: dict[str, list[str]] = {}
    for u in sorted(units):
        by_stratum.setdefault(strata[u], []).append(u)
    assignment: dict[str, int] = {}
    slot = 0
    for stratum in sorted(by_stratum, key=lambda k: (-len(by_stratum[k]), k)):
        members = by_stratum[stratum]
        for i in seeded_permutation(len(members), seed).tolist():
            assignment[members[i]] = slot % folds
            slot += 1
    return assignment


def split_pairs(
    pairs: Sequence[SegPair],
    root: str | os.PathLike,
    val_size: int | float | None,
    test_size: int | float | None,
    seed: int = 0,
    by: str = "image",
    folds: int = 0,
    fold: int = 0,
) -> dict[str, list[SegPair]]:
    """``{'train', 'val', 'test'}`` lists, split by image (or by ``group``): no image is in two splits.

    With ``folds`` >= 2 the test split is fold ``fold`` of an organ-stratified k-fold split
    (:func:`fold_assignment`; cross-validation). Otherwise it is ``index.csv``'s
    ``split_suggestion == 'test'`` when that file exists and ``test_size`` is None, else a seeded
    ``test_size`` of the units. ``val_size`` comes from the rest.
    """
    if by not in ("image", "group"):
        raise ValueError(f"split_by must be 'image' or 'group', got {by!r}")
    key = (lambda p: p.id) if by == "image" else (lambda p: p.group)
    units = sorted({key(p) for p in pairs})
    if folds:
        if not 0 <= fold < folds:
            raise ValueError(f"fold must be in 0..{folds - 1}, got {fold}")
        if test_size is not None:
            raise ValueError(f"test_size={test_size} and folds={folds} both choose the test split; set only one")
    suggested = _suggested_test_ids(Path(root)) if test_size is None and not folds else None
    if folds:
        assignment = fold_assignment(units, image_strata(units, root), folds, seed)
        test_units = {u for u in units if assignment[u] == fold}
    elif suggested is not None:
        test_units = {u for u in units if u in suggested}
    else:
        perm = seeded_permutation(len(units), seed + 1).tolist()
        test_units = {units[i] for i in perm[: resolve_count(test_size, len(units), "test_size")]}
    rest = [u for u in units if u not in test_units]
    perm = seeded_permutation(len(rest), seed).tolist()
    val_units = {rest[i] for i in perm[: resolve_count(val_size, len(rest), "val_size")]}
    splits: dict[str, list[SegPair]] = {"train": [], "val": [], "test": []}
    for p in pairs:
        unit = key(p)
        splits["test" if unit in test_units else "val" if unit in val_units else "train"].append(p)
    if not splits["train"]:
        raise ValueError(f"the split left no training images ({len(units)} {by}s, val_size={val_size}, "
                         f"test_size={test_size})")
    return splits


def tile_origins(height: int, width: int, tile: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of a grid of ``tile``-sized windows with ``stride``, from the top-left corner.

    Example:
        >>> len(tile_origins(1000, 1000, 128, 128))  # 7 x 7 tiles of an 896 x 896 crop
        49
    """
    if height < tile or width < tile:
        return []
    return [(y, x) for y in range(0, height - tile + 1, stride) for x in range(0, width - tile + 1, stride)]


def _load_mask(path: Path, mode: str, num_classes: int) -> np.ndarray:
    try:
        with Image.open(path) as img:
            array = np.array(img)
    except Exception as e:  # a broken mask file gets the same clear one-line reason as a broken image
        raise ImageReadError(path, f"unreadable mask: {describe_read_error(e, path)}") from e
    if array.ndim == 3:
        array = array[..., 0]
    if mode == "binary":
        return (array > 0).astype(np.int64)
    if array.max() >= num_classes or array.min() < 0:
        raise ValueError(f"label mask {path} holds values {int(array.min())}..{int(array.max())}, expected "
                         f"0..{num_classes - 1}")
    return array.astype(np.int64)


class SegmentationTiles(Dataset):
    """``(image (C, T, T) normalised float, mask (T, T) int64)`` tiles of whole images held in memory.

    With ``jitter`` the tile origin is drawn at random anywhere in its image (training); otherwise
    tiles follow the fixed grid. With ``jitter`` and ``scale_range = (lo, hi)`` a window of ``s * T``
    pixels (``s`` log-uniform in [lo, hi]) is cut and resized to ``T`` (image bilinear with antialiasing,
    mask nearest): scale augmentation. ``augment`` is applied to image and mask together.
    """

    def __init__(
        self,
        pairs: Sequence[SegPair],
        tile_size: int = 128,
        stride: int | None = None,
        in_chans: int = 3,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        mask_mode: str = "binary",
        num_classes: int = 2,
        augment: PairedAugment | Callable | None = None,
        jitter: bool = False,
        tiles: Sequence[int] | None = None,
        scale_range: Sequence[float] | None = None,
    ) -> None:
        if mask_mode not in ("binary", "labels"):
            raise ValueError(f"mask_mode must be 'binary' or 'labels', got {mask_mode!r}")
        self.pairs, self.tile, self.stride = list(pairs), int(tile_size), int(stride or tile_size)
        self.mean, self.std, self.augment, self.jitter = tuple(mean), tuple(std), augment, bool(jitter)
        if scale_range is not None and not (len(scale_range) == 2 and 0 < scale_range[0] <= scale_range[1]):
            raise ValueError(f"scale_range must be (min, max) with 0 < min <= max, got {scale_range!r}")
        self.scale_range = tuple(float(v) for v in scale_range) if scale_range is not None else None
        pil_mode(in_chans)  # refuses anything but 1 or 3 channels, with a clear message
        self.images: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.index: list[tuple[int, int, int]] = []
        for i, pair in enumerate(self.pairs):
            image = read_image(pair.image, in_chans).as_uint8(channels=in_chans)
            mask = _load_mask(pair.mask, mask_mode, num_classes)
            if image.shape[:2] != mask.shape:
                raise ValueError(f"{pair.image} is {image.shape[1]}x{image.shape[0]} but its mask {pair.mask} is "
                                 f"{mask.shape[1]}x{mask.shape[0]}")
            origins = tile_origins(*mask.shape, self.tile, self.stride)
            if not origins:
                raise ValueError(f"{pair.image} ({mask.shape[1]}x{mask.shape[0]}) is smaller than one "
                                 f"{self.tile}x{self.tile} tile")
            self.images.append(image if image.ndim == 3 else image[..., None])
            self.masks.append(mask)
            self.index += [(i, y, x) for y, x in origins]
        if tiles is not None:
            self.index = [self.index[t] for t in tiles]
        self.classes = ["background", "foreground"] if mask_mode == "binary" else [str(c) for c in range(num_classes)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        i, y, x = self.index[idx]
        image, mask = self.images[i], self.masks[i]
        size = self.tile
        if self.jitter and self.scale_range is not None:
            lo, hi = math.log(self.scale_range[0]), math.log(self.scale_range[1])
            scale = math.exp(lo + (hi - lo) * float(torch.rand(())))
            size = max(1, min(round(self.tile * scale), *image.shape[:2]))
        if self.jitter:
            y = int(torch.randint(image.shape[0] - size + 1, ()))
            x = int(torch.randint(image.shape[1] - size + 1, ()))
        img = torch.from_numpy(np.ascontiguousarray(image[y : y + size, x : x + size])).permute(2, 0, 1).float() / 255.0
        msk = torch.from_numpy(np.ascontiguousarray(mask[y : y + size, x : x + size]))
        if size != self.tile:
            img = F.interpolate(img[None], size=(self.tile, self.tile), mode="bilinear", antialias=True,
                                align_corners=False)[0].clamp(0, 1)
            msk = F.interpolate(msk[None, None].float(), size=(self.tile, self.tile), mode="nearest-exact")[0, 0].long()
        if self.augment is not None:
            img, msk = self.augment(img, msk)
        return normalize(img, self.mean, self.std), msk
