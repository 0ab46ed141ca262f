"""``gdzoo eval``: top-1/top-5 and per-class accuracy, or pixel accuracy / Dice / IoU, of a trained model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .overrides import accept_dotted_flags


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model (run folder, checkpoint, Hub folder or pretrained) on a dataset split",
        description="Evaluate a model on the test (or val) split of a recipe's dataset. With a --checkpoint inside a "
        "gdzoo run folder, that run's recipe and model are used; otherwise the built-in Fashion-MNIST data.",
    )
    p.add_argument("--model", help="timm model name (default: the run's model)")
    p.add_argument("--checkpoint", help="run folder, best.safetensors / last.pth, or a weights/<model>.<tag>/ folder")
    p.add_argument("--pretrained", action="store_true", help="use the model's published pretrained weights")
    p.add_argument("--config", "-c", help="recipe whose data section defines the dataset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--data-dir", help="dataset folder (data.root)")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--output", help="write the metrics as JSON here")
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
    from ..training.datasets import build_datasets
    from ..training.distributed import DistInfo, resolve_device
    from ..training.engine import Engine, build_criterion
    from ..training.inference import class_names_for, load_trained_model
    from ..training.modeling import is_segmentation
    from ..training.recipes import DEFAULT_RECIPE
    from ..training.trainer import eval_loader, whole_image_scores

    try:
        model, run_recipe = load_trained_model(args.model, args.checkpoint, args.pretrained, args.num_classes)
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
        bundle = build_datasets(recipe.data, recipe.augment, model, task)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"gdzoo eval: {e}", file=sys.stderr)
        return 2
    dataset = bundle.test if args.split == "test" else bundle.val
    if dataset is None:
        print(f"gdzoo eval: the dataset has no {args.split} split", file=sys.stderr)
        return 2
    info = DistInfo(device=resolve_device(args.device))
    model.to(info.device)
    classes = bundle.classes
    if task == "classification" and len(classes) == getattr(model, "num_classes", len(classes)):
        classes = class_names_for(model, args.checkpoint, len(classes)) if classes[0].isdigit() else classes
    engine = Engine(model, model, None, None, build_criterion(task), info, task, args.amp)  # type: ignore[arg-type]
    metrics = engine.evaluate(model, eval_loader(dataset, recipe, info), classes, args.split)
    metrics.update(whole_image_scores(model, dataset, recipe, info.device))
    print(format_metrics(metrics, f"{recipe.model.name if not args.model else args.model} {args.split}"))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"split": args.split, **metrics}, indent=2) + "\n")
    return 0
