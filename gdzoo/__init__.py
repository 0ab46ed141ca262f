"""gdzoo: fully trainable Gaussian-derivative convolutions and the models built on them, for timm."""

__version__ = "0.1.0"

from .kernels import generator, set_generator  # noqa: E402
from .layers import GDConv2d, conv_to_gd, fit_gdconv_, gdify, steer  # noqa: E402
from . import models  # noqa: E402  (registers gdzoo's model families with timm)

__all__ = ["GDConv2d", "__version__", "conv_to_gd", "fit_gdconv_", "gdify", "generator", "set_generator", "steer"]
