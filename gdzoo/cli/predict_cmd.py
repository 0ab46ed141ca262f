"""``gdzoo predict``: run a model on image files; class predictions to CSV, or tiled segmentation masks + overlays.

Argument parsing only: the work is :class:`gdzoo.inference.Predictor`'s (every input written or named with the reason
it failed; re-running the same command resumes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..inference.jobs import PredictReport as Report
from ..inference.jobs import collect_jobs
from ..inference.journal import OutputConflict
from .weights_args import add_weights_arguments

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="run a model on image files (classification -> CSV; segmentation -> tiled masks and overlays)",
        description="Classification models write predictions.csv (top-k classes and probabilities, or the reason a "
        "file could not be read). Segmentation models run tiled, overlapping inference on images of any size and "
        "write <name>_mask.png and <name>_overlay.png (folders are searched recursively and mirrored). A file that "
        "cannot be used is reported and skipped; the exit code is 1 when any input failed. Re-running the same "
        "command skips inputs already done (--overwrite redoes them).",
    )
    p.add_argument("inputs", nargs="+", help="image files or folders of images (searched recursively)")
    add_weights_arguments(p)
    p.add_argument("--num-classes", type=int)
    p.add_argument("--output", "-o", default="predictions", help="output folder")
    p.add_argument("--tile", type=int, default=None, help="segmentation tile size (default: the model's input size)")
    p.add_argument("--overlap", type=int, default=32, help="overlap between segmentation tiles in pixels")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true", help="redo inputs whose outputs already exist")
    p.add_argument("--memory-limit", type=float, default=None, metavar="GIB",
                   help="refuse (and report) images whose decoding would need more than this many GiB "
                        "(default: 80%% of this machine's memory)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Check the options, list the inputs (missing ones are named even when the weights then fail), load, predict;
    a problem the user can fix is one line and exit code 2, a run with failed inputs exits with 1."""
    from ..inference.predictor import Predictor, check_options

    try:
        check_options(args.batch_size, args.topk, args.tile, args.memory_limit)
    except ValueError as e:
        return _usage_error(e)
    report = Report()
    jobs = collect_jobs(args.inputs, Path(args.output), report)
    try:
        predictor = Predictor.from_weights(
            args.model, args.output, checkpoint=args.checkpoint, pretrained=args.pretrained,
            random_init=args.random_init, num_classes=args.num_classes, device=args.device, tile=args.tile,
            overlap=args.overlap, batch_size=args.batch_size, topk=args.topk, overwrite=args.overwrite,
            memory_limit=args.memory_limit)
    except (FileNotFoundError, ValueError, OSError) as e:
        return _usage_error(e)
    try:
        predictor.run(jobs, report)
    except OutputConflict as e:
        return _usage_error(e)
    except KeyboardInterrupt:
        print(report.summary(str(Path(args.output))), file=sys.stderr)
        print("gdzoo predict: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(report.summary(str(predictor.result_path)))
    return 1 if report.failed else 0


def _usage_error(error: BaseException) -> int:
    print(f"gdzoo predict: {error}", file=sys.stderr)
    return 2
