"""``gdzoo eval``: top-1/top-5 and per-class accuracy, or pixel accuracy / Dice / IoU, of a trained model.

Argument parsing only: the work is :mod:`gdzoo.inference.evaluation`'s.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .._io import atomic_write_text
from ..inference.evaluation import format_metrics
from .overrides import accept_dotted_flags
from .weights_args import add_weights_arguments

__all__ = ["add_parser", "format_metrics", "run"]  # format_metrics moved to gdzoo.inference.evaluation


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model (run folder, checkpoint, Hub folder or pretrained) on a dataset split",
        description="Evaluate a model on the test (or val, or train) split of a recipe's dataset. With a "
        "--checkpoint inside a gdzoo run folder, that run's recipe and model are used; otherwise the built-in "
        "Fashion-MNIST data. The train split is scored without augmentation, as the other splits, so its gap to "
        "val/test tells under- from overfitting.",
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


def run(args: argparse.Namespace) -> int:
    """Load the model and its recipe's datasets, score the split, print (and with --output write) the metrics."""
    from ..inference.evaluation import NothingToEvaluate, evaluate_split, prepare_evaluation
    from ..training import ConfigError

    try:
        setup = prepare_evaluation(
            args.model, args.checkpoint, pretrained=args.pretrained, random_init=args.random_init,
            num_classes=args.num_classes, config=args.config, data_dir=args.data_dir, batch_size=args.batch_size,
            overrides=list(args.overrides) + list(getattr(args, "dotted_overrides", []) or []),
            class_map=args.class_map)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        return _usage_error(e)
    try:
        result = evaluate_split(setup, args.split, strict=args.strict, device=args.device, amp=args.amp)
    except NothingToEvaluate as e:
        return _usage_error(e)
    print(format_metrics(result.metrics, result.title))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.output, json.dumps(result.as_json(), indent=2) + "\n")
    return 0


def _usage_error(error: BaseException) -> int:
    print(f"gdzoo eval: {error}", file=sys.stderr)
    return 2
