"""Loading a trained model for ``gdzoo eval`` / ``gdzoo predict``: weights from a run, a file, a Hub folder or the
published ones; built with the recipe, checkpoint and model factory of :mod:`gdzoo.training`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch.nn as nn
import yaml

from ..errors import UserError
from ..training.checkpoint import model_state_from_file
from ..training.config import ModelConfig, Recipe, recipe_from_dict
from ..training.modeling import create_model

__all__ = ["choose_weights", "find_run_recipe", "load_trained_model", "class_names_for", "published_tag",
           "trained_class_names"]

RANDOM_INIT_HINT = "pass --random-init for untrained weights"


def published_tag(name: str) -> str | None:
    """``'<model>.<tag>'`` of the published weights ``timm.create_model(name, pretrained=True)`` loads, or None.

    Published means a copy ships with gdzoo (the weights resolver says ``'shipped'``): ``name`` with its tag, or the
    model's default tag; a tag that loads another published tag's file (``gd_fmnist_sc.fmnist``) counts.
    """
    from ..models.weights_source import resolve

    try:
        source = resolve(name, download=False)
    except Exception:  # noqa: BLE001 - not a timm model: create_model names the problem later
        return None
    return source.name if source is not None and source.kind == "shipped" else None


def choose_weights(command: str, name: str | None, checkpoint: str | Path | None, pretrained: bool,
                   random_init: bool) -> bool:
    """Whether ``gdzoo eval`` / ``gdzoo predict`` load the published weights (``pretrained``) of ``name``.

    With neither ``--pretrained`` nor ``--checkpoint``: the model's published weights, said on stderr, when it
    has them; otherwise a :class:`UserError` unless ``--random-init`` asks for untrained weights on purpose (a
    mask or an accuracy from random weights fooled newcomers who forgot ``--pretrained``).
    """
    import sys

    if random_init:
        if pretrained or checkpoint is not None:
            raise UserError("--random-init means untrained weights; leave out --pretrained and --checkpoint")
        return False
    if pretrained or checkpoint is not None or not name:
        return pretrained
    tag = published_tag(name)
    if tag is None:
        import timm
        from timm.models import split_model_name_tag

        fetchable = timm.list_pretrained(split_model_name_tag(name)[0])
        fetch = "--pretrained (weights timm fetches or derives), " if fetchable else ""
        raise UserError(f"{name} has no published weights; give --checkpoint (a gdzoo run folder or weights file), "
                        f"{fetch}or --random-init for untrained weights")
    print(f"gdzoo {command}: using the published weights {tag} ({RANDOM_INIT_HINT})", file=sys.stderr, flush=True)
    return True


def _run_dir(checkpoint: str | Path | None) -> Path | None:
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    folder = path if path.is_dir() else path.parent
    return folder if (folder / "config.yaml").is_file() else None


def find_run_recipe(checkpoint: str | Path | None) -> Recipe | None:
    """The recipe saved beside a checkpoint by ``gdzoo train`` (its run folder's ``config.yaml``), if any."""
    folder = _run_dir(checkpoint)
    if folder is None:
        return None
    return recipe_from_dict(yaml.safe_load((folder / "config.yaml").read_text()))


def trained_class_names(model: nn.Module, checkpoint: str | Path | None, num_classes: int) -> list[str] | None:
    """Class names from the run folder's ``classes.json``, else ``pretrained_cfg['label_names']``; None if neither
    fits."""
    folder = _run_dir(checkpoint)
    if folder is not None and (folder / "classes.json").is_file():
        names = json.loads((folder / "classes.json").read_text())
        if len(names) == num_classes:
            return [str(n) for n in names]
    names = (getattr(model, "pretrained_cfg", {}) or {}).get("label_names")
    if names and len(names) == num_classes:
        return [str(n) for n in names]
    return None


def class_names_for(model: nn.Module, checkpoint: str | Path | None, num_classes: int) -> list[str]:
    """Class names from the run folder's ``classes.json``, else ``pretrained_cfg['label_names']``, else indices."""
    return trained_class_names(model, checkpoint, num_classes) or [str(i) for i in range(num_classes)]


def _head_classes(model: nn.Module, state: dict[str, Any]) -> int | None:
    """Number of classes the state dict's classifier was trained for (None if it cannot tell)."""
    heads = (getattr(model, "pretrained_cfg", {}) or {}).get("classifier") or ()
    for head in (heads,) if isinstance(heads, str) else tuple(heads):
        weight = state.get(f"{head}.weight")
        if weight is not None:
            return int(weight.shape[0])
    return None


def _check_folder_architecture(checkpoint: str | Path | None, name: str) -> None:
    """A Hub folder (``weights/<model>.<tag>/``, with its ``config.json``) given for another model: say which it
    holds."""
    if checkpoint is None or not Path(checkpoint).is_dir() or not (Path(checkpoint) / "config.json").is_file():
        return
    config_file = Path(checkpoint) / "config.json"
    try:
        holds = json.loads(config_file.read_text(encoding="utf-8")).get("architecture")
    except (ValueError, AttributeError) as e:
        raise UserError(f"{config_file} is not a valid timm config.json ({e}); fix it or export the folder "
                        "again") from e
    asked = name.removeprefix("timm/").split(".")[0]
    if isinstance(holds, str) and not asked.startswith(("local-dir:", "hf-hub:")) and holds != asked:
        raise UserError(f"{checkpoint} holds {holds} weights, but --model asks for {asked}; use --model {holds}")


def load_trained_model(
    name: str | None, checkpoint: str | Path | None = None, pretrained: bool = False, num_classes: int | None = None
) -> tuple[nn.Module, Recipe | None]:
    """Build ``name`` (or the run's model) and load ``checkpoint``: a run folder, best.safetensors, last.pth or a Hub
    folder.

    The number of classes comes from ``num_classes``, else the run's recipe, else the checkpoint's classifier.
    """
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"--num-classes must be a positive int (the classifier's classes), got {num_classes}; "
                         "leave it out for the run's or the weights' classes")
    if checkpoint is not None and not Path(checkpoint).exists():
        raise UserError(f"--checkpoint {checkpoint} does not exist; give a gdzoo run folder (runs/<name>), its "
                        "best.safetensors or last.pth, or a weights/<model>.<tag>/ folder (or leave --checkpoint out "
                        "for the model's published weights)")
    recipe = find_run_recipe(checkpoint)
    if checkpoint is not None and Path(checkpoint).is_dir() and (Path(checkpoint) / "best.safetensors").is_file():
        checkpoint = Path(checkpoint) / "best.safetensors"
    name = name or (recipe.model.name if recipe else None)
    if not name:
        raise ValueError("give --model (or a --checkpoint inside a gdzoo run folder, which names its model)")
    _check_folder_architecture(checkpoint, name)
    cfg = ModelConfig(name=name, pretrained=pretrained and checkpoint is None, num_classes=num_classes)
    if recipe is not None:
        cfg.kwargs, cfg.in_chans = dict(recipe.model.kwargs), recipe.model.in_chans
        if num_classes is None and recipe.model.num_classes is not None:
            cfg.num_classes = recipe.model.num_classes
    model, _ = create_model(cfg, cfg.num_classes)
    if checkpoint is None:
        return model.eval(), recipe
    state = model_state_from_file(checkpoint)
    trained_classes = _head_classes(model, state)
    built_classes = getattr(model, "num_classes", trained_classes)
    if num_classes is None and trained_classes is not None and trained_classes != built_classes:
        cfg.num_classes = trained_classes
        model, _ = create_model(cfg, trained_classes)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{checkpoint} does not fit {name}: missing {missing[:8]}, unexpected {unexpected[:8]}")
    return model.eval(), recipe
