"""``gdzoo train``: run a recipe (``--config``), with overrides; no arguments runs the built-in main job."""

from __future__ import annotations

import argparse
import shlex
import sys

from .overrides import accept_dotted_flags

# Shortcut flags and the recipe keys they set.
SHORTCUTS = {
    "model": "model.name",
    "pretrained": "model.pretrained",
    "initial_checkpoint": "model.initial_checkpoint",
    "num_classes": "model.num_classes",
    "data_dir": "data.root",
    "batch_size": "data.batch_size",
    "workers": "data.workers",
    "train_subset": "data.train_subset",
    "lr": "optim.lr",
    "opt": "optim.opt",
    "epochs": "train.epochs",
    "seed": "train.seed",
    "device": "train.device",
    "amp": "train.amp",
    "freeze": "train.freeze",
    "resume": "train.resume",
    "output": "output.dir",
    "name": "output.name",
    "export_tag": "output.export_tag",
}
FLAGS = {"channels_last": "train.channels_last", "compile": "train.compile", "deterministic": "train.deterministic",
         "ema": "train.ema", "export": "output.export", "no_progress": "output.progress",
         "overwrite": "output.overwrite"}
FLAG_HELP = {"overwrite": "start afresh in a run folder that holds a run: its files move to <name>.old-<UTC time>/ "
                          "beside it first (without it, such a folder is refused unless --resume)"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train / fine-tune a model from a recipe (no arguments: gd_fmnist on Fashion-MNIST)",
        description="Train or fine-tune a timm model from a YAML recipe. Without --config, the built-in main job "
        "runs: gd_fmnist on Fashion-MNIST (fine-tuned from pretrained weights when present). Any recipe key can be "
        "overridden with --set section.key=value or --section.key value (e.g. --optim.lr 0.01). "
        "Multi-GPU: torchrun --nproc_per_node=N -m gdzoo train --config ...",
        epilog="Recipe keys: see docs/training.md or `gdzoo train --print-config`.",
    )
    p.add_argument("--config", "-c", default=None, help="YAML recipe (e.g. configs/fmnist_default.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key (repeatable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    p.add_argument("--model", help="timm model name (model.name)")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                   help="start from pretrained weights")
    p.add_argument("--initial-checkpoint", help="weights to start from (.safetensors / .pth / Hub folder)")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--data-dir", help="dataset folder (data.root); class folders or images/ + masks/ get a recipe "
                   "made for them (docs/training.md, 'Fine-tune on your own images')")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--train-subset", type=int, help="seeded subset size of the training pool")
    p.add_argument("--lr", type=float)
    p.add_argument("--opt", choices=("adam", "adamw", "sgd"))
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"))
    p.add_argument("--freeze", choices=("none", "head_only", "all_but_stem", "stem_and_head", "regex"))
    p.add_argument("--resume", nargs="?", const="auto", help="resume from a last.pth (default: the run folder's)")
    p.add_argument("--output", help="output root folder (output.dir)")
    p.add_argument("--name", help="run folder name (output.name)")
    p.add_argument("--export-tag", help="Hub tag of the exported best checkpoint")
    for flag in FLAGS:
        p.add_argument(f"--{flag.replace('_', '-')}", action="store_true", default=None, help=FLAG_HELP.get(flag))
    accept_dotted_flags(p)
    p.set_defaults(run=run)


def _overrides(args: argparse.Namespace) -> list[str]:
    """Shortcut flags, then ``--set`` and dotted flags (later wins)."""
    out = []
    for attr, key in SHORTCUTS.items():
        value = getattr(args, attr, None)
        if value is not None:
            out.append(f"{key}={value if not isinstance(value, bool) else str(value).lower()}")
    for attr, key in FLAGS.items():
        if getattr(args, attr, None):
            out.append(f"{key}={'false' if attr == 'no_progress' else 'true'}")
    return out + list(args.overrides) + list(getattr(args, "dotted_overrides", []) or [])


def _folder_plan(args: argparse.Namespace, file_data: dict | None, overrides: list[str]):  # -> FolderPlan | None
    """The recipe defaults for ``--data-dir`` DIR (a folder of the user's images), or None where they do not apply:
    no ``--data-dir``, a Fashion-MNIST recipe or a folder of idx files."""
    from ..data.layout import holds_idx_files
    from ..training import ConfigError
    from ..training.config import apply_overrides
    from ..training.folder_recipe import folder_recipe

    if not args.data_dir:
        return None
    user = apply_overrides(file_data or {}, overrides)
    data, model = user.get("data") or {}, user.get("model") or {}
    if data.get("dataset") == "fashion_mnist" or holds_idx_files(args.data_dir):
        return None
    plan = folder_recipe(args.data_dir, model.get("name"), model.get("pretrained", "auto"),
                         model.get("initial_checkpoint"), adapt_only=file_data is not None)
    asked = data.get("dataset")
    if asked is not None and asked != plan.defaults["data"]["dataset"]:
        raise ConfigError(f"data.dataset={asked} but {args.data_dir} is a {plan.layout.task} folder "
                          f"({plan.layout.layout}); use data.dataset={plan.defaults['data']['dataset']}")
    return plan


def run(args: argparse.Namespace) -> int:
    import os

    from ..training import ConfigError, recipe_to_yaml
    from ..training.config import apply_overrides, merge_recipe_dicts, read_recipe_file, recipe_from_dict
    from ..training.recipes import default_recipe

    try:
        overrides = _overrides(args)
        file_data = read_recipe_file(args.config) if args.config else None
        plan = _folder_plan(args, file_data, overrides)
        if plan is not None:  # the folder's defaults, under the -c recipe and the overrides
            base = merge_recipe_dicts(plan.defaults, file_data or {})
        elif file_data is not None:
            base = file_data
        else:
            base = default_recipe().to_dict()  # the main job (fine-tunes when pretrained weights exist)
        recipe = recipe_from_dict(apply_overrides(base, overrides))
    except ConfigError as e:
        print(f"gdzoo train: {e}", file=sys.stderr)
        return 2
    if plan is not None and os.environ.get("RANK", "0") == "0":
        from pathlib import Path

        from ..training.folder_recipe import describe

        run_dir = Path(recipe.output.dir) / (recipe.output.name or recipe.name)
        print(describe(plan, recipe, run_dir), file=sys.stderr, flush=True)
    if args.print_config:
        print(recipe_to_yaml(recipe), end="")
        return 0
    from ..errors import UserError
    from ..training import train
    from ..training.engine import NonFiniteLossError
    from ..training.rundir import RunFolderError

    try:
        train(recipe, command=shlex.join(["gdzoo", "train", *sys.argv[2:]]) if sys.argv[1:2] == ["train"] else None)
    except UserError:
        raise  # one line (the traceback with --debug) from gdzoo.cli.main
    except (FileNotFoundError, ValueError, RunFolderError) as e:
        print(f"gdzoo train: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:  # the run failed (not the command): 1
        print(f"gdzoo train: {e}", file=sys.stderr)
        return 1
    return 0
