"""Classification datasets: Fashion-MNIST tensors and ``ImageFolder`` trees, served as PIL images to timm transforms."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from .fashion_mnist import FMNIST_LABELS, load_fashion_mnist
from .images import read_pil

__all__ = ["TensorImageDataset", "fashion_mnist_dataset", "image_folder_dataset", "IMG_EXTENSIONS"]

IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_MODES = {1: "L", 3: "RGB"}
_CHANNELS = {mode: chans for chans, mode in _MODES.items()}


def pil_mode(in_chans: int) -> str:
    """PIL mode whose channel count matches the model input (``L`` or ``RGB``)."""
    if in_chans not in _MODES:
        raise ValueError(f"image datasets feed 1- or 3-channel models, this one takes {in_chans} channels")
    return _MODES[in_chans]


class TensorImageDataset(Dataset):
    """uint8 images ``(N, C, H, W)`` + labels, returned as PIL images in ``mode`` through ``transform``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], mode: str = "L",
                 transform: Callable | None = None) -> None:
        self.images, self.labels, self.classes = images, labels, list(classes)
        self.mode, self.transform = mode, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[object, int]:
        array = self.images[index].permute(1, 2, 0).squeeze(-1).numpy()
        image = Image.fromarray(array).convert(self.mode)
        return (self.transform(image) if self.transform else image), int(self.labels[index])


def fashion_mnist_dataset(split: str, data_dir: str | os.PathLike | None, mode: str = "L") -> TensorImageDataset:
    """The ``'train'`` or ``'test'`` split of Fashion-MNIST (idx files), without transform yet."""
    images, labels = load_fashion_mnist(split, data_dir)
    return TensorImageDataset(images, labels, FMNIST_LABELS, mode)


class ImageFileDataset(Dataset):
    """``(path, label)`` samples read in ``mode`` ('L' or 'RGB') and passed through ``transform``.

    Files are read by :func:`gdzoo.data.images.read_image`: 16-bit scaled (not clipped), transparency over
    white, EXIF orientation honoured, the same pixels ``gdzoo predict`` sees.
    """

    def __init__(self, samples: Sequence[tuple[Path, int]], classes: Sequence[str], mode: str = "RGB",
                 transform: Callable | None = None) -> None:
        self.samples, self.classes, self.mode, self.transform = list(samples), list(classes), mode, transform
        self.labels = torch.tensor([label for _, label in self.samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[object, int]:
        path, label = self.samples[index]
        image = read_pil(path, _CHANNELS[self.mode])  # ImageReadError names the file and the reason
        return (self.transform(image) if self.transform else image), label


def image_folder_dataset(root: str | os.PathLike, classes: Sequence[str] | None = None, mode: str = "RGB") -> ImageFileDataset:
    """An ``ImageFolder`` tree ``root/<class>/<image>``; ``classes`` fixes the label order (e.g. train's)."""
    root = Path(root)
    layout = "expected ImageFolder layout ROOT/<class name>/<image files> (e.g. ROOT/cat/1.jpg, ROOT/dog/2.jpg)"
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; {layout}")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise FileNotFoundError(f"{root} has no class sub-folders; {layout}")
    classes = list(classes) if classes is not None else found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(f"{root} has classes {unknown} that the training set does not have ({classes})")
    samples = []
    for label, name in enumerate(classes):
        folder = root / name
        if folder.is_dir():
            files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
            samples += [(p, label) for p in files]
    if not samples:
        raise FileNotFoundError(f"no images ({', '.join(IMG_EXTENSIONS)}) under {root}; {layout}")
    return ImageFileDataset(samples, classes, mode)
