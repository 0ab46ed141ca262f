"""``gdzoo eval``: top-1/top-5 and per-class accuracy, or pixel accuracy / Dice / IoU, of a trained model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .._io import atomic_write_text
from .overrides import accept_dotted_flags
from .weights_args import add_weights_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model (run folder, checkpoint, Hub folder or pretrained) on a dataset split",
        description="Evaluate a model on the test (or val, or train) split of a recipe's dataset. With a --checkpoint inside "
        "a gdzoo run folder, that run's recipe and model are used; otherwise the built-in Fashion-MNIST data. The train "
        "split is scored without augmentation, as the other splits, so its gap to val/test tells under- from overfitting.",
    )
    add_weights_arguments(p)
    p.add_argument("--config", "-c", help="recipe whose data section defines the dataset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--split", choices=("test", "val", "train"), default="test")
    p.add_argument("--data-dir", help="dataset folder (data.root)")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--class-map", metavar="FILE",
                   help="image folders: JSON {folder name: class index or class name} for folders that are not named "
                        "(or numbered 0_..., 1_...) as the model's classes")
    p.add_argument("--output", help="write the metrics as JSON here")
    p.add_argument("--strict", action="store_true",
                   help="stop, before evaluating, when any image of an image-folder split cannot be read "
                        "(default: skip such images, name them and count them)")
    accept_dotted_flags(p)
    p.set_defaults(run=run)


def format_metrics(metrics: dict, split: str) -> str:
    """Scalar metrics and the per-class table as text."""
    from ..training.reporting import format_summary, scalar_metrics

    text = format_summary(list(scalar_metrics(metrics).items()), f"{split} metrics")
    per_class = metrics.get("per_class") or {}
    if per_class:
        rows = []
        for name, value in per_class.items():
            rows.append((name, value if not isinstance(value, dict) else f"dice {value['dice']:.2f}  iou {value['iou']:.2f}"))
        text += "\n" + format_summary(rows, "per class" + (" accuracy (%)" if rows and not isinstance(next(iter(per_class.values())), dict) else ""))
    return text


def run(args: argparse.Namespace) -> int:
    from ..training import ConfigError
    from ..training.config import apply_overrides, load_recipe, recipe_from_dict
    from ..training.datasets import build_datasets, unaugmented
    from ..training.distributed import DistInfo, resolve_device
    from ..training.engine import Engine, build_criterion
    from ..training.inference import choose_weights, class_names_for, load_trained_model
    from ..training.modeling import is_segmentation
    from ..training.recipes import DEFAULT_RECIPE
    from ..training.trainer import eval_loader, whole_image_scores

    try:
        pretrained = choose_weights("eval", args.model, args.checkpoint, args.pretrained, args.random_init)
        model, run_recipe = load_trained_model(args.model, args.checkpoint, pretrained, args.num_classes)
        overrides = list(args.overrides) + list(getattr(args, "dotted_overrides", []) or [])
        if args.data_dir:
            overrides.append(f"data.root={args.data_dir}")
        overrides.append(f"data.eval_batch_size={args.batch_size}")
        if args.config:
            recipe = load_recipe(args.config, overrides)
        elif run_recipe is not None:
            recipe = recipe_from_dict(apply_overrides(run_recipe.to_dict(), overrides))
        else:
            recipe = recipe_from_dict(apply_overrides(DEFAULT_RECIPE, overrides))
        task = "segmentation" if is_segmentation(model, recipe.model.task) else "classification"
        class_to_idx, class_names = None, None
        if task == "classification" and recipe.data.dataset == "image_folder":
            class_to_idx, class_names = _class_mapping(model, args, recipe)
        elif args.class_map:
            raise ValueError(f"--class-map is for image folders (data.dataset=image_folder), not {recipe.data.dataset}")
        bundle = build_datasets(recipe.data, recipe.augment, model, task, class_to_idx, class_names)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"gdzoo eval: {e}", file=sys.stderr)
        return 2
    if args.split == "train":
        dataset = unaugmented(bundle.train, bundle.data_config)
    else:
        dataset = bundle.test if args.split == "test" else bundle.val
    if dataset is None:
        print(f"gdzoo eval: the dataset has no {args.split} split", file=sys.stderr)
        return 2
    dataset, unreadable = _without_unreadable(dataset, bundle.data_config["input_size"][0], args.strict, recipe.data.workers)
    if dataset is None:
        return 2
    info = DistInfo(device=resolve_device(args.device))
    model.to(info.device)
    classes = bundle.classes
    if class_to_idx is None and task == "classification" and len(classes) == getattr(model, "num_classes", len(classes)):
        classes = class_names_for(model, args.checkpoint, len(classes)) if classes[0].isdigit() else classes
    engine = Engine(model, model, None, None, build_criterion(task), info, task, args.amp)  # type: ignore[arg-type]
    metrics = engine.evaluate(model, eval_loader(dataset, recipe, info), classes, args.split)
    metrics.update(whole_image_scores(model, dataset, recipe, info.device))
    if unreadable:
        metrics["skipped_images"] = len(unreadable)
    print(format_metrics(metrics, f"{recipe.model.name if not args.model else args.model} {args.split}"))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        skipped = {str(path): reason for path, reason in unreadable}
        extra = {"class_folders": class_to_idx} if class_to_idx is not None else {}
        atomic_write_text(args.output, json.dumps({"split": args.split, **metrics, **extra, **({"skipped": skipped} if skipped else {})},
                                                  indent=2) + "\n")
    return 0


def _class_mapping(model, args: argparse.Namespace, recipe) -> tuple[dict[str, int] | None, list[str] | None]:  # type: ignore[no-untyped-def]
    """Image-folder class folder -> the model's class index, and the model's class names; (None, None) where the folders
    define the classes (a head not trained yet and no --class-map: today's alphabetical order).

    A trained head (a checkpoint, or --pretrained with its own number of classes) is matched by name (case, spaces
    and punctuation ignored), else by number (0_..., 1_...), else by --class-map; a folder none of these
    matches stops the evaluation (ClassMatchError) instead of scoring it against the wrong class.
    """
    from ..data.classification import load_class_map, match_class_folders
    from ..training.datasets import image_folder_classes
    from ..training.inference import trained_class_names

    num_classes = getattr(model, "num_classes", None)
    pretrained_cfg = getattr(model, "pretrained_cfg", {}) or {}
    trained = num_classes is not None and num_classes > 0 and (
        args.checkpoint is not None
        or (args.pretrained and (args.num_classes is None or args.num_classes == pretrained_cfg.get("num_classes"))))
    class_map = load_class_map(args.class_map) if args.class_map else None
    names = trained_class_names(model, args.checkpoint, num_classes) if trained else None
    folders = image_folder_classes(recipe.data)
    mapping = match_class_folders(folders, names, num_classes if (trained or class_map) else None, class_map,
                                  where=str(recipe.data.root))
    if mapping is None:
        return None, None
    if names is None:
        names = []
        for i in range(num_classes if num_classes is not None else max(mapping.values()) + 1):
            named = [f for f, index in mapping.items() if index == i]
            names.append(named[0] if len(named) == 1 else str(i))
    renamed = [f"{f!r} -> {names[i]!r} ({i})" for f, i in sorted(mapping.items(), key=lambda kv: kv[1]) if f != names[i]]
    print(f"gdzoo eval: {len(mapping)} class folders labelled with the model's classes"
          + (f"; by another name: {', '.join(renamed)}" if renamed else " by name"), file=sys.stderr)
    return mapping, names


def _without_unreadable(dataset, channels: int, strict: bool, workers: int):  # type: ignore[no-untyped-def]
    """The split without the image files that cannot be decoded, and those files with the reasons.

    Every file of an image-folder split is decoded once up front (in threads), so a corrupt file is found
    before any evaluation: with ``strict`` the command stops there (dataset None), otherwise it is skipped.
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
        print(f"gdzoo eval: {len(unreadable)} of {len(files)} images cannot be read (--strict, nothing evaluated):\n{listing}",
              file=sys.stderr)
        return None, unreadable
    if len(unreadable) == len(files):
        print(f"gdzoo eval: none of the {len(files)} images can be read:\n{listing}", file=sys.stderr)
        return None, unreadable
    print(f"gdzoo eval: skipping {len(unreadable)} of {len(files)} images that cannot be read "
          f"(--strict stops instead):\n{listing}", file=sys.stderr)
    return drop_image_files(dataset, {path for path, _ in unreadable}), unreadable
