"""The GD convolution layer, its functional form (gd_conv2d) and execution paths, fitting to pretrained filters and
model surgery; steering and scale channels; the DAU baseline layer."""

from .dau_conv import DAUConv2d
from .fit import FitReport, fit_gd_kernel, fit_gdconv_
from .gd_conv import GDConv2d, no_weight_decay_names
from .gd_functional import combine_dense, combine_separated, gd_conv2d
from .gdify import conv_to_gd, gdify
from .scale_channels import OrientationChannels, ScaleChannels
from .steer import steer, steer_gdconv

__all__ = ["DAUConv2d", "FitReport", "GDConv2d", "OrientationChannels", "ScaleChannels", "combine_dense",
           "combine_separated", "conv_to_gd", "fit_gd_kernel", "fit_gdconv_", "gd_conv2d", "gdify",
           "no_weight_decay_names", "steer", "steer_gdconv"]
