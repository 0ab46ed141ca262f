"""The GD convolution layer and its functional execution paths."""

from .gd_conv import GDConv2d
from .gd_functional import combine_dense, combine_separated

__all__ = ["GDConv2d", "combine_dense", "combine_separated"]
