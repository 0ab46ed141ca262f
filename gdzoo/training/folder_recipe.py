"""A recipe for the user's own folder of images: ``gdzoo train --model M --pretrained --data-dir DIR``.

:func:`folder_recipe` maps (folder, model) to recipe defaults: the dataset and its layout, ``num_classes`` and
``in_chans`` from the data (timm / gdzoo adapt a pretrained stem and head to them), a seeded validation split when
there is no ``val/`` folder, and a fine-tuning or from-scratch schedule sized to the data. The CLI lays a ``-c``
recipe and ``--set`` overrides over these defaults, so either wins; :func:`describe` says what was decided.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.layout import DataLayout, detect_layout
from ..data.splits import class_quotas, resolve_count
from .config import Recipe
from .datasets import DEFAULT_VAL_SIZE

__all__ = ["FolderPlan", "DEFAULT_MODEL", "describe", "folder_recipe", "run_name"]

DEFAULT_MODEL = {"classification": "gd_fmnist", "segmentation": "gd_unet"}  # small gdzoo models with shipped weights
VAL_FRACTION = 0.15  # held out when there is no val/ folder (classification: per class, at least one each)
FINETUNE_LR, SCRATCH_LR = 1e-3, 5e-3  # Adam: the main job's fine-tuning lr; the MoNuSeg zoo recipe's from-scratch lr
# Optimizer steps aimed at, and the epoch range: short for fine-tuning, longer from scratch.
STEPS = {True: (300, 3, 30), False: (1500, 5, 100)}
MAX_BATCH = {"classification": 32, "segmentation": 16}
FALLBACK_SIZE = {"classification": 224, "segmentation": 128}  # when the model's pretrained cfg names no input size


@dataclass
class FolderPlan:
    """The folder as found, the model, whether it starts from weights, and the recipe defaults chosen for it."""

    layout: DataLayout
    model: str
    finetune: bool  # starts from pretrained weights / a checkpoint (small lr, short schedule)
    defaults: dict[str, Any]  # a recipe mapping (sections of keys), to be overridden by -c and --set


def _slug(text: str) -> str:
    """A file-name-safe word: 'hf-hub:org/m.v1' -> 'm.v1'."""
    text = text.rsplit(":", 1)[-1].rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "data"


def run_name(model: str, folder: str | Path) -> str:
    """The run folder name ``<model>-<folder name>``.

    Example:
        >>> run_name("gd_unet", "data/my_slides/"), run_name("local-dir:weights/gd_fmnist.fmnist", ".")[:17]
        ('gd_unet-my_slides', 'gd_fmnist.fmnist-')
    """
    folder = Path(folder)
    return f"{_slug(model)}-{_slug((folder if folder.name else folder.resolve()).name)}"


def _input_size(model: str) -> int | None:
    """The square input size of ``model``'s pretrained cfg (None when timm does not know the name)."""
    import timm.models

    from .. import models as _gdzoo_models  # noqa: F401  (registers gdzoo's models)

    try:
        name, _ = timm.models.split_model_name_tag(model)
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - hf-hub: / local-dir: names: the model's own cfg decides at build time
        return None
    size = getattr(cfg, "input_size", None) if cfg is not None else None
    return int(size[-1]) if size else None


def _starts_from_weights(model: str, pretrained: Any, initial_checkpoint: Any) -> bool:
    if initial_checkpoint or pretrained is True:
        return True
    if pretrained is False:
        return False
    from ..models.pretrained import available_weights_file

    return available_weights_file(model) is not None  # 'auto' (the default): weights on this machine


def _val_images(layout: DataLayout, val_size: Any, split_by: str = "class") -> int:
    """Images the recipe's ``val_size`` holds out of the training pool (0 with a val/ folder)."""
    if layout.has_val or not val_size:
        return 0
    n = layout.counts["train"]
    total = resolve_count(val_size, n, "val_size")
    if layout.task == "classification" and split_by == "class":
        return sum(class_quotas(list(layout.per_class.values()), total))
    return total


def _epochs(samples: int, batch: int, finetune: bool) -> int:
    target, low, high = STEPS[finetune]
    return max(low, min(high, math.ceil(target / max(1, math.ceil(samples / batch)))))


def folder_recipe(folder: str | Path, model: str | None = None, pretrained: Any = "auto",
                  initial_checkpoint: Any = None, adapt_only: bool = False) -> FolderPlan:
    """Recipe defaults for training ``model`` (None: :data:`DEFAULT_MODEL` of the task) on ``folder``.

    ``adapt_only`` (a ``-c`` recipe is given): only the model and the data keys (dataset, root, classes, channels,
    masks), no split, schedule or run name. Raises :class:`~gdzoo.data.layout.LayoutError` for a folder in no known
    layout.
    """
    layout = detect_layout(folder)
    task = layout.task
    model = model or DEFAULT_MODEL[task]
    finetune = _starts_from_weights(model, pretrained, initial_checkpoint)
    dataset = "image_folder" if task == "classification" else "segmentation"
    data: dict[str, Any] = {"dataset": dataset, "root": str(folder)}
    model_keys: dict[str, Any] = {"in_chans": layout.in_chans}
    if task == "classification":
        model_keys["num_classes"] = len(layout.classes)
    else:
        data.update(mask_mode=layout.mask_mode, num_classes=len(layout.classes))
    model_keys["name"] = model  # a -c recipe's own model.name wins over it
    defaults: dict[str, Any] = {"model": model_keys, "data": data}
    if adapt_only:
        return FolderPlan(layout, model, finetune, defaults)

    n_pool = layout.counts["train"]
    spare = max(layout.per_class.values()) >= 2 if task == "classification" else n_pool >= 2  # an image to hold out
    can_validate = spare and not layout.has_val
    val_size = VAL_FRACTION if can_validate else 0
    data["val_size"] = val_size
    n_train = n_pool - _val_images(layout, val_size)
    size = _input_size(model) or FALLBACK_SIZE[task]
    if task == "classification":
        data.update(split_by="class", img_size=size)
        samples = n_train
        augment = {"enabled": True, "scale": [0.5, 1.0], "hflip": 0.5}
    else:
        smallest = min(min(hw) for hw in layout.image_sizes)
        tile = min(size, smallest) // 16 * 16  # U-nets halve the tile 4 times
        if tile < 16:
            from ..data.layout import LayoutError

            raise LayoutError(f"{folder}: the smallest training image is {smallest} pixels on a side; "
                              "segmentation tiles need at least 16")
        data["tile_size"] = tile
        if not layout.has_test and not layout.has_index_csv:
            data["test_size"] = 0  # every image trains or validates; index.csv (MoNuSeg) keeps its suggested test split
        tiles = sum((h // tile) * (w // tile) for h, w in layout.image_sizes)
        samples = max(1, round(tiles * n_train / max(1, n_pool)))
        augment = {"enabled": True, "hflip": 0.5, "vflip": 0.5, "rot90": True}
    batch = max(1, min(MAX_BATCH[task], samples))
    data["batch_size"] = batch
    defaults.update(
        name=run_name(model, folder),
        augment=augment,
        optim={"opt": "adam", "lr": FINETUNE_LR if finetune else SCRATCH_LR},
        sched={"name": "cosine", "alpha": 0.01, "warmup_epochs": 0.0 if finetune else 1.0},
        train={"epochs": _epochs(samples, batch, finetune), **({"loss": "dice_ce"} if task == "segmentation" else {})},
    )
    return FolderPlan(layout, model, finetune, defaults)


def describe(plan: FolderPlan, recipe: Recipe, run_dir: str | Path) -> str:
    """A short block on what was found and decided, with the final values (after ``-c`` and ``--set``)."""
    lay, d = plan.layout, recipe.data
    counts = (f"{lay.counts['train']}" if len(lay.counts) == 1
              else ", ".join(f"{n} in {s}/" for s, n in lay.counts.items()))
    lines = [f"gdzoo train: {lay.root} is a {lay.task} folder ({lay.layout}): {counts} images"]
    if lay.task == "classification":
        shown = ", ".join(f"{name} ({n})" for name, n in list(lay.per_class.items())[:8])
        shown += " ..." if len(lay.per_class) > 8 else ""
        lines.append(f"  classes  {len(lay.classes)}: {shown}")
    else:
        lines.append(f"  masks    {d.mask_mode}, {d.num_classes} classes (values {lay.mask_values[:8]})")
    if lay.has_val:
        split = f"train/ for training, val/ ({lay.counts['val']} images) for validation"
    else:
        val_size = d.val_size if d.val_size is not None else DEFAULT_VAL_SIZE[d.dataset]
        n_val = _val_images(lay, val_size, d.split_by)
        how = "stratified by class" if lay.task == "classification" and d.split_by == "class" else f"by {d.split_by}"
        split = (f"{lay.counts['train'] - n_val} train / {n_val} val images (data.val_size={val_size}, {how}, "
                 f"seed {d.split_seed})" if n_val
                 else "no validation split (data.val_size=0): the last epoch's weights are kept")
    if lay.task == "segmentation" and not lay.has_test:
        split += ("; test: index.csv's suggestion" if d.test_size is None and lay.has_index_csv
                  else f"; test_size={d.test_size}" if d.test_size else "; no test split")
    lines.append(f"  split    {split}")
    m = recipe.model
    lines.append(f"  model    {m.name} ({'fine-tuning from pretrained weights' if plan.finetune else 'from scratch'}), "
                 f"num_classes={m.num_classes if m.num_classes is not None else d.num_classes}, in_chans={m.in_chans}"
                 f" ({'greyscale' if lay.in_chans == 1 else 'colour'} images)")
    size = f"img_size {d.img_size}" if lay.task == "classification" else f"tile_size {d.tile_size}"
    o = recipe.optim
    lines.append(f"  recipe   {recipe.train.epochs} epochs, batch {d.batch_size}, {o.opt} lr {o.lr:g}, "
                 f"{recipe.sched.name} schedule, {size}, augment {'on' if recipe.augment.enabled else 'off'}")
    lines.append(f"  run      {run_dir}")
    lines.append("  change any of it with --set section.key=value (e.g. --set train.epochs=5 --set data.val_size=0.2); "
                 "all keys: --print-config")
    return "\n".join(lines)
