"""Classification datasets: Fashion-MNIST tensors and ``ImageFolder`` trees, served as PIL images to timm transforms."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from .fashion_mnist import FMNIST_LABELS, load_fashion_mnist
from .images import read_pil

__all__ = ["TensorImageDataset", "fashion_mnist_dataset", "image_folder_dataset", "IMG_EXTENSIONS", "ClassMatchError",
           "class_folders", "class_key", "load_class_map", "match_class_folders"]

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


_LAYOUT = "expected ImageFolder layout ROOT/<class name>/<image files> (e.g. ROOT/cat/1.jpg, ROOT/dog/2.jpg)"


def class_folders(root: str | os.PathLike) -> list[str]:
    """The class sub-folder names of an ``ImageFolder`` tree, sorted (hidden folders left out)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; {_LAYOUT}")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise FileNotFoundError(f"{root} has no class sub-folders; {_LAYOUT}")
    return found


def image_folder_dataset(root: str | os.PathLike, classes: Sequence[str] | None = None, mode: str = "RGB",
                         class_to_idx: Mapping[str, int] | None = None) -> ImageFileDataset:
    """An ``ImageFolder`` tree ``root/<class>/<image>``; ``classes`` fixes the label order (e.g. train's).

    With ``class_to_idx`` (folder name -> class index, e.g. from :func:`match_class_folders`) the labels are
    those indices and ``classes`` must name every index (the model's classes); each folder must be in the map.
    """
    root = Path(root)
    found = class_folders(root)
    if class_to_idx is not None:
        if classes is None:
            raise ValueError("image_folder_dataset: class_to_idx needs classes, the names of the class indices")
        classes = list(classes)
        unknown = sorted(set(found) - set(class_to_idx))
        if unknown:
            raise ValueError(f"{root} has class folders {unknown} that the class mapping does not name")
        pairs = [(name, class_to_idx[name]) for name in found]
    else:
        classes = list(classes) if classes is not None else found
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise ValueError(f"{root} has classes {unknown} that the training set does not have ({classes})")
        pairs = [(name, label) for label, name in enumerate(classes)]
    samples = []
    for name, label in pairs:
        folder = root / name
        if folder.is_dir():
            files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
            samples += [(p, label) for p in files]
    if not samples:
        raise FileNotFoundError(f"no images ({', '.join(IMG_EXTENSIONS)}) under {root}; {_LAYOUT}")
    return ImageFileDataset(samples, classes, mode)


class ClassMatchError(ValueError):
    """The class folders of an image folder cannot be matched to a trained model's classes."""


def class_key(name: str) -> str:
    """A class name without case, spaces or punctuation: 'T-shirt/top', 'T-shirt_top' and 't shirt top' ->
    'tshirttop'."""
    return "".join(ch for ch in name.casefold() if ch.isalnum())


def _numbered(folders: Sequence[str]) -> dict[str, int] | None:
    """``{folder: number}`` when every folder is numbered with one shared prefix
    ('0_T-shirt', '7', 'c3', 'class_12')."""
    numbers, prefixes = {}, set()
    for folder in folders:
        m = re.match(r"^(\D*)(\d+)", folder)
        if m is None:
            return None
        prefixes.add(m.group(1))
        numbers[folder] = int(m.group(2))
    return numbers if len(prefixes) == 1 else None


def load_class_map(path: str | os.PathLike) -> dict[str, int | str]:
    """A ``--class-map`` JSON file: ``{folder name: class index or class name}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class map {path} does not exist (a JSON object {{folder name: class index or class "
                                "name})")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ClassMatchError(f"class map {path} is not valid JSON ({e})") from e
    if not isinstance(data, dict) or not all(
            isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)) for v in data.values()):
        raise ClassMatchError(f"class map {path} must be a JSON object {{folder name: class index or class name}}, "
                              f'e.g. {{"shoes": 7, "bags": "Bag"}}')
    return data


def match_class_folders(folders: Sequence[str], label_names: Sequence[str] | None = None,
                        num_classes: int | None = None, class_map: Mapping[str, int | str] | None = None,
                        where: str = "the image folder") -> dict[str, int] | None:
    """Class folder name -> index of a trained classifier, or None where the folder names define the classes.

    ``label_names`` are the trained model's class names (index order), ``num_classes`` its head size when the
    weights fix it (no names known). A folder is matched, in this order, by ``class_map`` (a class index or a
    class name), by name (case, spaces and punctuation ignored: 'T-shirt_top' is 'T-shirt/top'), or by
    number when all remaining folders are numbered alike ('0_T-shirt', '1_Trouser'... or 'c0', 'c1'...).
    Raises :class:`ClassMatchError` (one line, naming the unmatched folders and the model's classes) when
    a folder matches nothing: scoring it against a class it is not would be garbage.
    With none of the three given (a model whose head is not trained yet), returns None.
    """
    if label_names is None and num_classes is None and class_map is None:
        return None
    n = len(label_names) if label_names is not None else num_classes
    by_key: dict[str, list[int]] = {}
    for i, name in enumerate(label_names or ()):
        by_key.setdefault(class_key(name), []).append(i)

    def by_name(name: str) -> int | None:
        if label_names is not None and name in label_names:
            return list(label_names).index(name)
        ids = by_key.get(class_key(name), [])
        return ids[0] if len(ids) == 1 else None

    mapping: dict[str, int] = {}
    for folder in folders:
        if class_map is None or folder not in class_map:
            continue
        value = class_map[folder]
        index = value if isinstance(value, int) else by_name(value)
        if index is None or (n is not None and not 0 <= index < n) or index < 0:
            valid = f"a class index 0..{n - 1}" if n is not None else "a class index >= 0"
            names = f" or one of the model's classes {list(label_names)}" if label_names else ""
            raise ClassMatchError(f"class map: folder {folder!r} -> {value!r} is not {valid}{names}")
        mapping[folder] = index
    rest = [f for f in folders if f not in mapping]
    for folder in rest:
        index = by_name(folder)
        if index is not None:
            mapping[folder] = index
    rest = [f for f in rest if f not in mapping]
    if rest and n is not None:
        numbers = _numbered(rest)
        if numbers is not None and all(0 <= k < n for k in numbers.values()):
            mapping.update(numbers)
            rest = []
    if rest and label_names is None and num_classes is None:  # a class map on a model yet to be trained: indices only
        raise ClassMatchError(f"class map: {where} has class folders {rest} that it does not name")
    if rest:
        model = (f"the model's {n} classes {list(label_names)}" if label_names is not None
                 else f"the model's {n} class indices 0..{n - 1} (its weights name no classes)")
        raise ClassMatchError(
            f"class folders {rest} of {where} match none of {model}; name the folders as the classes (case, spaces and "
            f"punctuation do not matter), number them 0_... to {n - 1}_..., or give --class-map FILE "
            f"(JSON {{folder name: class index or class name}})")
    return mapping
