"""Tiled, overlapping prediction of images of any size: the engine of ``gdzoo predict`` for segmentation models.

The code lives in :mod:`gdzoo.training.tiling` because the trainer's whole-image validation runs it too, and
imports flow one way (training below inference); this module is its place in the inference package.

Example:
    >>> from gdzoo.inference.tiling import axis_origins
    >>> axis_origins(300, 128, 96)
    [0, 96, 172]
"""

from ..training.tiling import ImageTiles, TensorTiles, axis_origins, predict_tiled, predict_tiled_rows

__all__ = ["ImageTiles", "TensorTiles", "axis_origins", "predict_tiled", "predict_tiled_rows"]
