"""Moved: loading a trained model is :mod:`gdzoo.inference.loading`; this module keeps the old import path working."""

from ..inference.loading import (
    RANDOM_INIT_HINT,
    choose_weights,
    class_names_for,
    find_run_recipe,
    load_trained_model,
    published_tag,
    trained_class_names,
)

__all__ = ["choose_weights", "find_run_recipe", "load_trained_model", "class_names_for", "published_tag",
           "trained_class_names", "RANDOM_INIT_HINT"]
