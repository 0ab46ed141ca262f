"""What a folder of the user's images holds: which layout (class folders or images + masks), classes, counts, channels.

:func:`detect_layout` reads only what it must (file names, image headers, and the masks' label values) so that
``gdzoo train --data-dir DIR`` can choose a recipe before anything is built. A folder in no supported layout, an
empty class folder or an image without a mask is a :class:`LayoutError`: one line naming the folder, the problem
and the layouts allowed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from .classification import IMG_EXTENSIONS
from .segmentation import find_segmentation_pairs

__all__ = ["LAYOUTS", "DataLayout", "LayoutError", "detect_layout", "holds_idx_files", "mask_classes"]

LAYOUTS = ("classification: DIR/<class>/<images> or DIR/train/<class>/ + DIR/val/<class>/; "
           "segmentation: DIR/images/ + DIR/masks/ (same file names) "
           "or DIR/train/{images,masks}/ + DIR/val/{images,masks}/")
_GREY_MODES = ("1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")
_SPLITS = ("train", "val", "test")


class LayoutError(UserError):
    """The folder matches none of the supported layouts (the message names it and lists them)."""


@dataclass
class DataLayout:
    """A data folder as found: task, layout, classes, images per split and class, channels, image sizes."""

    root: Path
    task: str  # 'classification' or 'segmentation'
    layout: str  # the layout in words, e.g. 'DIR/<class>/'
    classes: list[str]  # class folders, or the segmentation classes ('background', 'foreground' or '0', '1', ...)
    counts: dict[str, int]  # images per split folder found ('train', 'val', 'test'); 'train' is the pool to split
    per_class: dict[str, int] = field(default_factory=dict)  # classification: training-pool images per class
    in_chans: int = 3  # 1 when every image is greyscale, else 3
    mask_mode: str = "binary"  # segmentation: 'binary' (0 and one other value) or 'labels' (class ids 0..K-1)
    mask_values: list[int] = field(default_factory=list)  # segmentation: the label values found in the masks
    image_sizes: list[tuple[int, int]] = field(default_factory=list)  # segmentation: (height, width), training pool
    has_index_csv: bool = False  # segmentation: ROOT/index.csv (MoNuSeg's split suggestion)

    @property
    def has_val(self) -> bool:
        return self.counts.get("val", 0) > 0

    @property
    def has_test(self) -> bool:
        return self.counts.get("test", 0) > 0


def _fail(root: Path, problem: str) -> LayoutError:
    return LayoutError(f"{root}: {problem}; allowed layouts: {LAYOUTS}")


def _subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, as the image-folder dataset reads them), sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())


def _channels(files: list[Path]) -> int:
    """1 when every readable file's pixel mode is greyscale, else 3 (header only; unreadable files are skipped)."""
    for path in files:
        try:
            with Image.open(path) as img:
                mode = img.mode
        except Exception:  # noqa: BLE001 - an unreadable file is reported by the dataset that reads it
            continue
        if mode not in _GREY_MODES:
            return 3
    return 1


def mask_classes(values: list[int], where: Path) -> tuple[str, int]:
    """``(mask_mode, num_classes)`` for masks holding ``values``: 0 and at most one other value is binary,
    values 0..K-1 (K up to 64) are class ids.

    Example:
        >>> mask_classes([0, 255], Path("m")), mask_classes([0, 1, 2], Path("m")), mask_classes([0], Path("m"))
        (('binary', 2), ('labels', 3), ('binary', 2))
    """
    if len(values) <= 2 and min(values, default=0) == 0:
        return "binary", 2
    if min(values) >= 0 and max(values) < 64:
        return "labels", max(values) + 1
    shown = f"{values[:12]}{' ...' if len(values) > 12 else ''}"
    raise _fail(where, f"masks hold the values {shown}: expected binary masks (0 and one other value, e.g. 0/255) "
                       "or class ids 0..K-1 (K <= 64)")


def _classification(root: Path, pool: Path, val: Path | None, test: Path | None, layout: str) -> DataLayout:
    classes = _subfolders(pool)
    if not classes:
        raise _fail(root, f"{pool} has no class folders")
    per_class = {name: len(_image_files(pool / name)) for name in classes}
    empty = [name for name, n in per_class.items() if n == 0]
    if empty:
        raise _fail(root, f"class folder{'s' if len(empty) > 1 else ''} {', '.join(str(pool / e) for e in empty)} "
                          f"hold{'' if len(empty) > 1 else 's'} no images ({', '.join(IMG_EXTENSIONS)})")
    if len(classes) < 2:
        raise _fail(root, f"only one class folder ({classes[0]}/): a classifier needs at least two")
    counts = {"train": sum(per_class.values())}
    files = [f for name in classes for f in _image_files(pool / name)]
    for name, folder in (("val", val), ("test", test)):
        if folder is None:
            continue
        extra = sorted(set(_subfolders(folder)) - set(classes))
        if extra:
            raise _fail(root, f"{folder} has class folders {extra} that {pool} does not have ({classes})")
        split_files = _image_files(folder)
        if not split_files:
            raise _fail(root, f"{folder} holds no images")
        counts[name] = len(split_files)
        files += split_files
    return DataLayout(root, "classification", layout, classes, counts, per_class, _channels(files))


def _segmentation(root: Path, pool: Path, val: Path | None, test: Path | None, layout: str) -> DataLayout:
    pairs, counts = [], {}
    for name, folder in (("train", pool), ("val", val), ("test", test)):
        if folder is None:
            continue
        try:
            found = find_segmentation_pairs(folder)
        except FileNotFoundError as e:
            raise _fail(root, str(e).split("; expected")[0]) from e
        counts[name] = len(found)
        pairs += [(name, p) for p in found]
    values: set[int] = set()
    sizes = []
    for split, pair in pairs:
        try:
            with Image.open(pair.mask) as img:
                mask = np.asarray(img)
        except Exception as e:  # any unreadable mask stops here, named
            raise _fail(root, f"mask {pair.mask} cannot be read ({type(e).__name__}: {e})") from e
        values.update(np.unique(mask[..., 0] if mask.ndim == 3 else mask).astype(int).tolist())
        if split == "train":
            sizes.append(mask.shape[:2])
    mode, num_classes = mask_classes(sorted(values), root)
    classes = ["background", "foreground"] if mode == "binary" else [str(c) for c in range(num_classes)]
    return DataLayout(root, "segmentation", layout, classes, counts, in_chans=_channels([p.image for _, p in pairs]),
                      mask_mode=mode, mask_values=sorted(values), image_sizes=[(int(h), int(w)) for h, w in sizes],
                      has_index_csv=(root / "index.csv").is_file())


def holds_idx_files(folder: str | os.PathLike) -> bool:
    """True for a folder of idx files (Fashion-MNIST's ``*-ubyte.gz``), which is no image folder."""
    folder = Path(folder)
    return folder.is_dir() and any(p.name.endswith(("-ubyte", "-ubyte.gz")) for p in folder.iterdir())


def detect_layout(root: str | os.PathLike) -> DataLayout:
    """The layout of ``root`` (see :data:`LAYOUTS`), its classes, counts and channels; :class:`LayoutError` otherwise.

    ``images/`` (and ``masks/``) or TNBC's ``Slide_XX/`` + ``GT_XX/`` mean segmentation, ``train/`` a split layout
    (``val/`` and ``test/`` beside it are optional), any other sub-folders are classes.
    """
    root = Path(root)
    if not root.is_dir():
        raise _fail(root, "no such folder" if not root.exists() else "not a folder")
    folders = _subfolders(root)
    if "train" in folders:
        extra = sorted(set(folders) - set(_SPLITS))
        if extra:
            raise _fail(root, f"has train/ and also {', '.join(e + '/' for e in extra)}: "
                              "beside train/ only val/ and test/ are allowed")
        pool = root / "train"
        val, test = ((root / s if (root / s).is_dir() else None) for s in ("val", "test"))
        inner = _subfolders(pool)
        beside = [s for s, f in (("val", val), ("test", test)) if f]
        if "images" in inner or "masks" in inner:
            names = "train/{images,masks}/" + "".join(f" + {s}/{{images,masks}}/" for s in beside)
            return _segmentation(root, pool, val, test, f"DIR/{names}")
        names = "train/<class>/" + "".join(f" + {s}/<class>/" for s in beside)
        return _classification(root, pool, val, test, f"DIR/{names}")
    if "val" in folders or "test" in folders:
        raise _fail(root, "has val/ or test/ but no train/ folder beside it")
    if "images" in folders or "masks" in folders:
        return _segmentation(root, root, None, None, "DIR/images/ + DIR/masks/")
    if folders and any(f.startswith("Slide_") for f in folders):
        return _segmentation(root, root, None, None, "DIR/Slide_XX/ + DIR/GT_XX/ (TNBC)")
    if not folders:
        loose = len(_image_files(root))
        if not loose:
            raise _fail(root, "no sub-folders and no images")
        raise _fail(root, f"no sub-folders ({loose} loose image files): put each class's images in a folder named "
                          "after the class, or images in images/ and their masks in masks/")
    return _classification(root, root, None, None, "DIR/<class>/")
