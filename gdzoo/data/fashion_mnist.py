"""Fashion-MNIST from its original idx ``.gz`` files (Debian's ``dataset-fashion-mnist`` or a download)."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from ..models.gd_fmnist import FMNIST_LABELS, FMNIST_MEAN, FMNIST_STD  # one source: the models' pretrained_cfg

__all__ = ["FMNIST_LABELS", "FMNIST_MEAN", "FMNIST_STD", "DEFAULT_FMNIST_DIR", "find_fashion_mnist",
           "load_fashion_mnist"]

DEFAULT_FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_HOW_TO_GET = (
    "Install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, files land in "
    f"{DEFAULT_FMNIST_DIR}), or download the four idx .gz files of "
    "https://github.com/zalandoresearch/fashion-mnist into a folder and pass it as data_dir "
    "(or set GDZOO_FMNIST_DIR)."
)


def find_fashion_mnist(data_dir: str | os.PathLike | None = None, splits: tuple[str, ...] = ("train", "test")) -> Path:
    """The folder holding the idx files of ``splits``: ``data_dir``, ``$GDZOO_FMNIST_DIR`` or the Debian location."""
    folder = Path(data_dir or os.environ.get("GDZOO_FMNIST_DIR") or DEFAULT_FMNIST_DIR)
    missing = [name for split in splits for name in _FILES[split] if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"Fashion-MNIST not found in {folder}: missing {', '.join(missing)}. {_HOW_TO_GET}")
    return folder


def _read_idx(path: Path, expected_dims: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path} is not an idx file: only {len(data)} bytes")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08 or ndim != expected_dims:
        raise ValueError(f"{path} is not a uint8 idx file with {expected_dims} dims (header {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {body.size} values")
    return body.reshape(shape)


def load_fashion_mnist(split: str = "train",
                       data_dir: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 (N, 1, 28, 28), labels int64 (N,))`` of the ``'train'`` or ``'test'`` split."""
    if split not in _FILES:
        raise ValueError(f"split must be one of {tuple(_FILES)}, got {split!r}")
    folder = find_fashion_mnist(data_dir, (split,))
    image_file, label_file = _FILES[split]
    images = _read_idx(folder / image_file, 3)
    labels = _read_idx(folder / label_file, 1)
    if len(images) != len(labels):
        raise ValueError(f"{folder}: {len(images)} images but {len(labels)} labels in the {split} split")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
