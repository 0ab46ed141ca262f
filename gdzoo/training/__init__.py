"""Training and fine-tuning engine: recipes, optimizers/schedules, the loop, checkpoints, DDP, metrics, reports."""

from .config import ConfigError, Recipe, load_recipe, recipe_from_dict, recipe_to_yaml
from .recipes import DEFAULT_RECIPE, default_recipe
from .rundir import RunFolderError
from .trainer import TrainResult, train

__all__ = ["ConfigError", "DEFAULT_RECIPE", "Recipe", "RunFolderError", "TrainResult", "default_recipe", "load_recipe",
           "recipe_from_dict", "recipe_to_yaml", "train"]
