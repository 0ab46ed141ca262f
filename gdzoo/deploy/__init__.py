"""Deploying trained GD models: reparameterise to plain convolutions, export (ONNX, torch.export, safetensors
twin), and check the written artefact against the eager model with its own runtime.

Sits after :mod:`gdzoo.training` in gdzoo's import order (it loads runs through it and reads the datasets of
:mod:`gdzoo.data` for its check inputs); only :mod:`gdzoo.cli` and the lazy ``gdzoo.export`` import it.
"""

from .api import ExportResult, export, report_path_for
from .formats import FORMATS
from .twins import PLAIN_TWINS

__all__ = ["FORMATS", "PLAIN_TWINS", "ExportResult", "export", "report_path_for"]
