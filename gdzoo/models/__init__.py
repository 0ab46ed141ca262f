"""gdzoo's timm model families; importing this package registers them with timm."""

from ._cfg import gd_cfg
from ._helpers import FixedNorm2d
from .gd_convnext import GdConvNeXt
from .gd_fmnist import FmnistNet
from .gd_fmnist_sc import ScaleChannelClassifier
from .gd_unet import UNet
from .gd_vgg import GdVGG
from .registry import list_gdzoo_models

__all__ = ["FixedNorm2d", "FmnistNet", "GdConvNeXt", "GdVGG", "ScaleChannelClassifier", "UNet", "gd_cfg",
           "list_gdzoo_models"]
