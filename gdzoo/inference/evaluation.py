"""Scoring a trained model on a recipe's split: top-1/top-5 and per-class accuracy, or pixel accuracy / Dice / IoU
(tiles, and whole images when the recipe asks). What ``gdzoo eval`` runs.

Imports only the standard library at module level (the CLI re-exports :func:`format_metrics` and must stay light).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["EvalResult", "EvalSetup", "NothingToEvaluate", "evaluate", "evaluate_split", "format_metrics",
           "prepare_evaluation"]


class NothingToEvaluate(Exception):
    """The split does not exist, none of its images can be read, or (``strict``) some cannot."""


@dataclass
class EvalSetup:
    """A loaded model and the datasets of its recipe, ready to score any split."""

    model: Any
    recipe: Any
    bundle: Any
    task: str
    checkpoint: str | Path | None = None
    name: str | None = None  # the model as asked for (else the recipe's)
    class_to_idx: dict[str, int] | None = None


@dataclass
class EvalResult:
    """The metrics of one split, the image-folder class mapping used (if any), and the images skipped as unreadable."""

    split: str
    title: str
    metrics: dict[str, Any]
    class_folders: dict[str, int] | None = None
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """What ``gdzoo eval --output`` writes."""
        extra = {"class_folders": self.class_folders} if self.class_folders is not None else {}
        skipped = {str(path): reason for path, reason in self.skipped}
        return {"split": self.split, **self.metrics, **extra, **({"skipped": skipped} if skipped else {})}


def format_metrics(metrics: dict, split: str) -> str:
    """Scalar metrics and the per-class table as text."""
    from ..training.reporting import format_summary, scalar_metrics

    text = format_summary(list(scalar_metrics(metrics).items()), f"{split} metrics")
    per_class = metrics.get("per_class") or {}
    if per_class:
        rows = []
        for name, value in per_class.items():
            rows.append((name, value if not isinstance(value, dict)
                         else f"dice {value['dice']:.2f}  iou {value['iou']:.2f}"))
        accuracy = rows and not isinstance(next(iter(per_class.values())), dict)
        text += "\n" + format_summary(rows, "per class" + (" accuracy (%)" if accuracy else ""))
    return text


def prepare_evaluation(model: str | None = None, checkpoint: str | Path | None = None, *, pretrained: bool = False,
                       random_init: bool = False, num_classes: int | None = None, config: str | Path | None = None,
                       overrides: Sequence[str] = (), data_dir: str | Path | None = None, batch_size: int = 256,
                       class_map: str | Path | None = None) -> EvalSetup:
    """Load the model (:func:`~gdzoo.inference.loading.load_trained_model`) and build its datasets: from ``config``,
    else the run folder's recipe, else the default Fashion-MNIST recipe, with ``overrides`` (``KEY=VALUE``).

    Raises ConfigError / FileNotFoundError / ValueError naming the problem.
    """
    from ..training.config import apply_overrides, load_recipe, recipe_from_dict
    from ..training.datasets import build_datasets
    from ..training.modeling import is_segmentation
    from ..training.recipes import DEFAULT_RECIPE
    from .loading import choose_weights, load_trained_model

    published = choose_weights("eval", model, checkpoint, pretrained, random_init)
    net, run_recipe = load_trained_model(model, checkpoint, published, num_classes)
    overrides = list(overrides)
    if data_dir:
        overrides.append(f"data.root={data_dir}")
    overrides.append(f"data.eval_batch_size={batch_size}")
    if config:
        recipe = load_recipe(config, overrides)
    elif run_recipe is not None:
        recipe = recipe_from_dict(apply_overrides(run_recipe.to_dict(), overrides))
    else:
        recipe = recipe_from_dict(apply_overrides(DEFAULT_RECIPE, overrides))
    task = "segmentation" if is_segmentation(net, recipe.model.task) else "classification"
    class_to_idx, class_names = None, None
    if task == "classification" and recipe.data.dataset == "image_folder":
        trained = _has_trained_head(net, checkpoint, pretrained, num_classes)
        class_to_idx, class_names = _class_mapping(net, checkpoint, trained, class_map, recipe)
    elif class_map:
        raise ValueError(f"--class-map is for image folders (data.dataset=image_folder), not {recipe.data.dataset}")
    bundle = build_datasets(recipe.data, recipe.augment, net, task, class_to_idx, class_names)
    return EvalSetup(net, recipe, bundle, task, checkpoint, model, class_to_idx)


def evaluate_split(setup: EvalSetup, split: str = "test", *, strict: bool = False, device: str = "auto",
                   amp: str = "none") -> EvalResult:
    """Score ``split`` ('test', 'val' or 'train': the training images without augmentation, to tell under- from
    overfitting). Unreadable image files are named and skipped (``strict``: :class:`NothingToEvaluate` instead)."""
    from ..training.datasets import unaugmented
    from ..training.distributed import DistInfo, resolve_device
    from ..training.engine import Engine, build_criterion
    from ..training.trainer import eval_loader, whole_image_scores
    from .loading import class_names_for

    model, recipe, bundle, task = setup.model, setup.recipe, setup.bundle, setup.task
    if split == "train":
        dataset = unaugmented(bundle.train, bundle.data_config)
    else:
        dataset = bundle.test if split == "test" else bundle.val
    if dataset is None:
        raise NothingToEvaluate(f"the dataset has no {split} split")
    dataset, unreadable = _without_unreadable(dataset, bundle.data_config["input_size"][0], strict, recipe.data.workers)
    info = DistInfo(device=resolve_device(device))
    model.to(info.device)
    classes = bundle.classes
    if (setup.class_to_idx is None and task == "classification"
            and len(classes) == getattr(model, "num_classes", len(classes))):
        classes = class_names_for(model, setup.checkpoint, len(classes)) if classes[0].isdigit() else classes
    engine = Engine(model, model, None, None, build_criterion(task), info, task, amp)  # type: ignore[arg-type]
    metrics = engine.evaluate(model, eval_loader(dataset, recipe, info), classes, split)
    metrics.update(whole_image_scores(model, dataset, recipe, info.device))
    if unreadable:
        metrics["skipped_images"] = len(unreadable)
    return EvalResult(split, f"{setup.name or recipe.model.name} {split}", metrics, setup.class_to_idx, unreadable)


def evaluate(model: str | None = None, checkpoint: str | Path | None = None, split: str = "test", *,
             strict: bool = False, device: str = "auto", amp: str = "none", **setup: Any) -> EvalResult:
    """:func:`prepare_evaluation` (``setup`` holds its keyword arguments) and :func:`evaluate_split` in one call."""
    return evaluate_split(prepare_evaluation(model, checkpoint, **setup), split, strict=strict, device=device, amp=amp)


def _has_trained_head(model: Any, checkpoint: str | Path | None, pretrained: bool, num_classes: int | None) -> bool:
    """The classifier was trained for its classes: a checkpoint, or published weights with their own classes."""
    heads = getattr(model, "num_classes", None)
    pretrained_cfg = getattr(model, "pretrained_cfg", {}) or {}
    return heads is not None and heads > 0 and (
        checkpoint is not None
        or (pretrained and (num_classes is None or num_classes == pretrained_cfg.get("num_classes"))))


def _class_mapping(model: Any, checkpoint: str | Path | None, trained: bool, class_map: str | Path | None,
                   recipe: Any) -> tuple[dict[str, int] | None, list[str] | None]:
    """Image-folder class folder -> the model's class index, and the model's class names; (None, None) where the folders
    define the classes (a head not trained yet and no ``class_map``: today's alphabetical order).

    A trained head (a checkpoint, or --pretrained with its own number of classes) is matched by name (case, spaces
    and punctuation ignored), else by number (0_..., 1_...), else by ``class_map``; a folder none of these
    matches stops the evaluation (ClassMatchError) instead of scoring it against the wrong class.
    """
    from ..data.classification import load_class_map, match_class_folders
    from ..training.datasets import image_folder_classes
    from .loading import trained_class_names

    num_classes = getattr(model, "num_classes", None)
    mapping_from = load_class_map(class_map) if class_map else None
    names = trained_class_names(model, checkpoint, num_classes) if trained else None
    folders = image_folder_classes(recipe.data)
    mapping = match_class_folders(folders, names, num_classes if (trained or mapping_from) else None, mapping_from,
                                  where=str(recipe.data.root))
    if mapping is None:
        return None, None
    if names is None:
        names = []
        for i in range(num_classes if num_classes is not None else max(mapping.values()) + 1):
            named = [f for f, index in mapping.items() if index == i]
            names.append(named[0] if len(named) == 1 else str(i))
    by_index = sorted(mapping.items(), key=lambda kv: kv[1])
    renamed = [f"{f!r} -> {names[i]!r} ({i})" for f, i in by_index if f != names[i]]
    print(f"gdzoo eval: {len(mapping)} class folders labelled with the model's classes"
          + (f"; by another name: {', '.join(renamed)}" if renamed else " by name"), file=sys.stderr)
    return mapping, names


def _without_unreadable(dataset: Any, channels: int, strict: bool, workers: int) -> tuple[Any, list[tuple[Path, str]]]:
    """The split without the image files that cannot be decoded, and those files with the reasons.

    Every file of an image-folder split is decoded once up front (in threads), so a corrupt file is found
    before any evaluation: with ``strict`` (or when no file is readable) :class:`NothingToEvaluate`, otherwise
    the files are named on stderr and skipped.
    """
    from ..data.images import find_unreadable
    from ..training.datasets import dataset_image_files, drop_image_files

    files = dataset_image_files(dataset)
    if not files:
        return dataset, []
    unreadable = find_unreadable(files, channels, workers=max(4, workers))
    if not unreadable:
        return dataset, []
    listing = "\n".join(f"  {path}: {reason}" for path, reason in unreadable)
    if strict:
        raise NothingToEvaluate(f"{len(unreadable)} of {len(files)} images cannot be read (--strict, nothing "
                                f"evaluated):\n{listing}")
    if len(unreadable) == len(files):
        raise NothingToEvaluate(f"none of the {len(files)} images can be read:\n{listing}")
    print(f"gdzoo eval: skipping {len(unreadable)} of {len(files)} images that cannot be read "
          f"(--strict stops instead):\n{listing}", file=sys.stderr)
    return drop_image_files(dataset, {path for path, _ in unreadable}), unreadable
