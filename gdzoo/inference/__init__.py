"""Running trained models: tiled prediction, loading a model from a run / checkpoint / published weights, and the
:class:`Predictor` that turns image files into resumable outputs (what ``gdzoo predict`` and ``gdzoo eval`` call).

Modules (each with one job):

- :mod:`~gdzoo.inference.tiling`: tiled, overlapping prediction of images of any size (the code stays in
  :mod:`gdzoo.training.tiling`: the trainer's whole-image validation runs it, and training sits below inference).
- :mod:`~gdzoo.inference.loading`: which weights (published by default), the run's recipe, class names, and
  :func:`load_trained_model`; built with :mod:`gdzoo.training`'s recipe, checkpoint and model factory.
- :mod:`~gdzoo.inference.jobs`: the input files of a run, where their outputs go, and the :class:`PredictReport`.
- :mod:`~gdzoo.inference.journal`: the output folder's records (``predictions.json``, the CSV journal, PNG
  completeness) that make a re-run resume.
- :mod:`~gdzoo.inference.predictor`: :class:`Predictor` (memory limit, device, classification and segmentation).
- :mod:`~gdzoo.inference.evaluation`: :func:`evaluate` a trained model on a recipe's split (``gdzoo eval``).

Imports flow one way: inference builds on models, data and training; deploy and the CLI import it (nothing in
training imports inference). Names are imported on first use, so the CLI imports :mod:`~gdzoo.inference.jobs` and
:mod:`~gdzoo.inference.journal` without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ImageTiles": "tiling", "TensorTiles": "tiling", "axis_origins": "tiling", "predict_tiled": "tiling",
    "predict_tiled_rows": "tiling",
    "choose_weights": "loading", "class_names_for": "loading", "find_run_recipe": "loading",
    "load_trained_model": "loading", "published_tag": "loading", "trained_class_names": "loading",
    "Job": "jobs", "PredictReport": "jobs", "collect_jobs": "jobs",
    "OutputConflict": "journal",
    "Predictor": "predictor", "default_memory_limit": "predictor",
    "EvalResult": "evaluation", "evaluate": "evaluation", "format_metrics": "evaluation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
