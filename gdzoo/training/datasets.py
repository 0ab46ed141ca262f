"""The recipe's train / validation / test datasets with transforms resolved from the model."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn
from torch.utils.data import Dataset

from ..data.classification import ImageFileDataset, class_folders, fashion_mnist_dataset, image_folder_dataset, pil_mode
from ..data.seg_transforms import PairedAugment
from ..data.segmentation import SegmentationTiles, find_segmentation_pairs, split_pairs
from ..data.splits import resolve_count, seeded_permutation, split_indices, stratified_split_indices
from ..data.transforms import build_transform, model_in_chans, resolve_data_config_for
from .config import AugmentConfig, DataConfig

__all__ = ["DataBundle", "build_datasets", "dataset_image_files", "dataset_num_classes", "drop_image_files",
           "image_folder_classes", "unaugmented", "DEFAULT_VAL_SIZE"]

DEFAULT_VAL_SIZE = {"fashion_mnist": 5000, "image_folder": 0.1, "segmentation": 0.15}


@dataclass
class DataBundle:
    """Datasets of one run and what the rest of the run needs to know about them."""

    train: Dataset
    val: Dataset | None
    test: Dataset | None
    classes: list[str]
    data_config: dict[str, Any]
    task: str
    names: list[str] = field(default_factory=list)  # dataset names for the model card
    split_ids: dict[str, list[str]] = field(default_factory=dict)  # segmentation: image ids per split


class _Transformed(Dataset):
    """A view of ``dataset`` (optionally a subset of indices) with its own transform."""

    def __init__(self, dataset: Any, indices: Any, transform: Any) -> None:
        self.dataset, self.indices, self.transform = dataset, indices, transform
        self.classes = dataset.classes

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.dataset)

    def __getitem__(self, i: int):
        image, label = self.dataset[int(self.indices[i]) if self.indices is not None else i]
        return self.transform(image), label


def _sample_indices(dataset: _Transformed) -> list[int]:
    return [int(i) for i in dataset.indices] if dataset.indices is not None else list(range(len(dataset.dataset)))


def dataset_image_files(dataset: Any) -> list[Path] | None:
    """The image files an image-folder split reads, in order; None for data held in memory (Fashion-MNIST, tiles)."""
    if isinstance(dataset, _Transformed) and isinstance(dataset.dataset, ImageFileDataset):
        return [dataset.dataset.samples[i][0] for i in _sample_indices(dataset)]
    return None


def drop_image_files(dataset: _Transformed, files: set[Path]) -> _Transformed:
    """The same split without the samples read from ``files`` (e.g. the unreadable ones)."""
    keep = [i for i in _sample_indices(dataset) if dataset.dataset.samples[i][0] not in files]
    return _Transformed(dataset.dataset, keep, dataset.transform)


def unaugmented(dataset: Dataset, data_config: dict[str, Any]) -> Dataset:
    """The same samples without augmentation, as a validation split sees them: the training images as the model is
    scored on them (e.g. ``gdzoo eval --split train``, to tell under- from overfitting)."""
    if isinstance(dataset, _Transformed):
        return _Transformed(dataset.dataset, dataset.indices, build_transform(data_config, is_training=False))
    if isinstance(dataset, SegmentationTiles):  # the fixed tile grid, no paired augmentation, no jitter or rescaling
        view = copy.copy(dataset)
        view.augment, view.jitter, view.scale_range = None, False, None
        return view
    raise TypeError(f"no un-augmented view of a {type(dataset).__name__}; expected a gdzoo classification or segmentation split")


def _subset(n: int, size: int | float | None, seed: int) -> list[int] | None:
    """Sorted seeded subset of ``range(n)`` (None when ``size`` is None)."""
    if size is None:
        return None
    count = resolve_count(size, n, "subset")
    return sorted(seeded_permutation(n, seed).tolist()[:count])


def dataset_num_classes(cfg: DataConfig) -> int:
    """Classes the dataset defines (before a model exists)."""
    if cfg.dataset == "fashion_mnist":
        return 10
    if cfg.dataset == "segmentation":
        return cfg.num_classes
    root = _require_root(cfg)
    train_root = root / "train" if (root / "train").is_dir() else root
    return len(image_folder_dataset(train_root).classes)


def image_folder_classes(cfg: DataConfig) -> list[str]:
    """Every class folder name of an image-folder dataset: ``ROOT/<class>`` or those of ``ROOT/{train,val,test}/``."""
    root = _require_root(cfg)
    roots = [root / "train" if (root / "train").is_dir() else root] + [root / s for s in ("val", "test") if (root / s).is_dir()]
    return sorted({name for r in roots for name in class_folders(r)})


def _require_root(cfg: DataConfig) -> Path:
    if not cfg.root:
        raise ValueError(f"data.root is required for data.dataset={cfg.dataset!r} (the folder holding the data)")
    return Path(cfg.root)


def _augment_kwargs(aug: AugmentConfig) -> dict[str, Any] | None:
    if not aug.enabled:
        return None
    return {"scale": aug.scale, "ratio": aug.ratio, "hflip": aug.hflip, "vflip": aug.vflip,
            "color_jitter": aug.color_jitter, "auto_augment": aug.auto_augment, "re_prob": aug.re_prob}


def _classification(cfg: DataConfig, aug: AugmentConfig, model: nn.Module, class_to_idx: Mapping[str, int] | None = None,
                    class_names: Sequence[str] | None = None) -> DataBundle:
    data_config = resolve_data_config_for(
        model, {"img_size": cfg.img_size, "mean": cfg.mean, "std": cfg.std, "interpolation": cfg.interpolation, "crop_pct": cfg.crop_pct}
    )
    mode = pil_mode(data_config["input_size"][0])
    train_tf = build_transform(data_config, is_training=True, augment=_augment_kwargs(aug))
    eval_tf = build_transform(data_config, is_training=False)
    val_size = DEFAULT_VAL_SIZE[cfg.dataset] if cfg.val_size is None else cfg.val_size
    if cfg.dataset == "fashion_mnist":
        full: Any = fashion_mnist_dataset("train", cfg.root, mode)
        test: Any = fashion_mnist_dataset("test", cfg.root, mode) if cfg.evaluate_test else None
        names = ["fashion_mnist"]
        val_source = full
    else:
        root = _require_root(cfg)
        train_root = root / "train" if (root / "train").is_dir() else root
        full = image_folder_dataset(train_root, class_names, mode, class_to_idx)
        val_source = image_folder_dataset(root / "val", full.classes, mode, class_to_idx) if (root / "val").is_dir() else full
        test = (image_folder_dataset(root / "test", full.classes, mode, class_to_idx)
                if cfg.evaluate_test and (root / "test").is_dir() else None)
        names = [root.name]
        if val_source is not full:
            val_size = 0
    if cfg.split_by == "class":  # stratified: each class held out in proportion, at least one where it can be
        train_idx, val_idx = stratified_split_indices(full.labels.tolist(), val_size, cfg.train_subset, cfg.split_seed)
    else:
        train_idx, val_idx = split_indices(len(full), val_size, cfg.train_subset, cfg.split_seed)
    if val_source is not full:
        val = _Transformed(val_source, None, eval_tf)
    else:
        val = _Transformed(full, val_idx, eval_tf) if len(val_idx) else None
    return DataBundle(
        train=_Transformed(full, train_idx, train_tf),
        val=val,
        test=_Transformed(test, _subset(len(test), cfg.test_subset, cfg.split_seed), eval_tf) if test is not None else None,
        classes=list(full.classes),
        data_config=data_config,
        task="classification",
        names=names,
    )


def _segmentation_splits(root: Path, cfg: DataConfig, val_size: int | float) -> dict[str, list]:
    """Image/mask pairs per split: the ``ROOT/train/`` (+ ``val/``, ``test/``) folders, else ROOT split by image."""
    if not (root / "train").is_dir() or (root / "images").is_dir():
        pairs = find_segmentation_pairs(root)
        return split_pairs(pairs, root, val_size, cfg.test_size, cfg.split_seed, cfg.split_by, cfg.folds, cfg.fold)
    if cfg.folds:
        raise ValueError(f"data.folds={cfg.folds} splits one folder of images; "
                         f"{root} already has train/ and val/ or test/ folders")
    train = root / "train"
    splits = split_pairs(find_segmentation_pairs(train), train, 0 if (root / "val").is_dir() else val_size, 0,
                         cfg.split_seed, cfg.split_by)
    for name in ("val", "test"):
        if (root / name).is_dir():
            splits[name] = find_segmentation_pairs(root / name)
    return splits


def _segmentation(cfg: DataConfig, aug: AugmentConfig, model: nn.Module) -> DataBundle:
    root = _require_root(cfg)
    data_config = resolve_data_config_for(model, {"mean": cfg.mean, "std": cfg.std})
    data_config["input_size"] = (model_in_chans(model), cfg.tile_size, cfg.tile_size)
    val_size = DEFAULT_VAL_SIZE["segmentation"] if cfg.val_size is None else cfg.val_size
    splits = _segmentation_splits(root, cfg, val_size)
    common = dict(tile_size=cfg.tile_size, stride=cfg.tile_stride, in_chans=data_config["input_size"][0],
                  mean=data_config["mean"], std=data_config["std"], mask_mode=cfg.mask_mode, num_classes=cfg.num_classes)
    augment = PairedAugment(aug.hflip, aug.vflip, aug.rot90, aug.color_jitter, aug.stain_jitter) if aug.enabled else None
    train = SegmentationTiles(splits["train"], augment=augment, jitter=aug.enabled and aug.tile_jitter,
                              scale_range=aug.scale_jitter if aug.enabled else None, **common)
    if cfg.train_subset is not None:
        train.index = [train.index[i] for i in _subset(len(train), cfg.train_subset, cfg.split_seed)]
    val = SegmentationTiles(splits["val"], **common) if splits["val"] else None
    test = SegmentationTiles(splits["test"], **common) if splits["test"] and cfg.evaluate_test else None  # held out either way
    if test is not None and cfg.test_subset is not None:
        test.index = [test.index[i] for i in _subset(len(test), cfg.test_subset, cfg.split_seed)]
    return DataBundle(
        train=train, val=val, test=test, classes=train.classes, data_config=data_config, task="segmentation",
        names=[root.name], split_ids={k: [p.id for p in v] for k, v in splits.items()},
    )


def build_datasets(cfg: DataConfig, aug: AugmentConfig, model: nn.Module, task: str,
                   class_to_idx: Mapping[str, int] | None = None, class_names: Sequence[str] | None = None) -> DataBundle:
    """Datasets for ``task`` ('classification' or 'segmentation') per the recipe's data section.

    For an image folder, ``class_to_idx`` (folder name -> class index) and ``class_names`` (the name of each
    index) label the images with a trained model's classes instead of the folders' alphabetical order.
    """
    if task == "segmentation" and cfg.dataset != "segmentation":
        raise ValueError(f"model is a segmentation model but data.dataset={cfg.dataset!r}; use data.dataset=segmentation")
    if task == "classification" and cfg.dataset == "segmentation":
        raise ValueError("data.dataset=segmentation needs a segmentation model (pretrained_cfg task 'segmentation' or model.task=segmentation)")
    if task == "segmentation":
        return _segmentation(cfg, aug, model)
    return _classification(cfg, aug, model, class_to_idx if cfg.dataset == "image_folder" else None, class_names)

