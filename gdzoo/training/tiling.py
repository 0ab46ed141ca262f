"""Moved: the tiling engine is :mod:`gdzoo.inference.tiling`, its whole-image scores :mod:`gdzoo.training.whole_image`.

This module keeps the old import path working.
"""

from ..inference.tiling import _pad_to  # noqa: F401 - private; kept for code that imported it from here
from ..inference.tiling import ImageTiles, TensorTiles, axis_origins, predict_tiled, predict_tiled_rows
from .whole_image import whole_image_metrics

__all__ = ["ImageTiles", "TensorTiles", "axis_origins", "predict_tiled", "predict_tiled_rows", "whole_image_metrics"]
