"""Built-in recipes: the default main job (``gdzoo train`` with no arguments)."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

from ..models.pretrained import available_weights_file
from .config import Recipe, apply_overrides, recipe_from_dict

__all__ = ["DEFAULT_RECIPE", "DEFAULT_RECIPE_FILE", "FINETUNE_OVERRIDES", "default_recipe"]

# Train gd_fmnist from scratch on a seeded 10k-image subset of Fashion-MNIST (2k held out for
# validation) and evaluate on the full 10k test set: about a minute on a quiet 2-core CPU, well under
# 5 minutes on a busy one. Its one copy is the package's fmnist_default.yaml (configs/fmnist_default.yaml links to it).
DEFAULT_RECIPE_FILE = "fmnist_default.yaml"
DEFAULT_RECIPE: dict[str, Any] = yaml.safe_load(resources.files(__package__).joinpath(DEFAULT_RECIPE_FILE).read_text())

# When pretrained gd_fmnist weights are on this machine (shipped with gdzoo, or in the HF cache) the main job
# fine-tunes them gently instead: a small learning rate, no warmup, two epochs.
FINETUNE_OVERRIDES = ["name=fmnist_finetune", "optim.lr=0.001", "sched.warmup_epochs=0", "train.epochs=2"]


def default_recipe(finetune: bool | None = None) -> Recipe:
    """The built-in main job; ``finetune`` None decides by whether pretrained weights are available."""
    if finetune is None:
        finetune = available_weights_file(DEFAULT_RECIPE["model"]["name"]) is not None
    return recipe_from_dict(apply_overrides(DEFAULT_RECIPE, FINETUNE_OVERRIDES if finetune else []))
