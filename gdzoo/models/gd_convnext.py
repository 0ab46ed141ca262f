"""``gd_convnext_atto``: timm's ConvNeXt-atto whose depthwise convolutions are Gaussian-derivative layers.

ConvNeXt's token mixer is one depthwise ``k×k`` convolution per block; a free-form one costs ``C·k²``
parameters, a GD one ``C·N`` combination weights plus ``5·N`` geometry numbers per basis, whatever ``k``
(the paper's point: a filter's size is independent of its parameter count, σ decides how much of the
window it uses). Everything else (stem, downsampling, MLPs, norms, head, feature taps, init) is timm's
:class:`~timm.models.convnext.ConvNeXt`.

- ``gd_convnext_atto``: ConvNeXt-atto (depths 2-2-6-2, widths 40-80-160-320), every block's 7×7
  ``conv_dw`` a ``GDConv2d(C, C, 7, groups=C)``, order 3 (N = 10), one basis per 8 channels.
- ``gd_convnext_atto_k31``: the same with 31×31 depthwise kernels, and exactly as many parameters.

Override the GD layers with ``gd_dw_args=dict(...)``: ``order``, ``channels_per_basis`` (channels sharing
one basis; ``None``: one basis per channel) and any other GDConv2d option (``separated``, ``trainable``...).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model
from timm.models.convnext import ConvNeXt
from timm.models.convnext import checkpoint_filter_fn as _convnext_filter_fn

from ..layers import GDConv2d, no_weight_decay_names
from ._cfg import gd_cfg
from .pretrained import build_gd_model

__all__ = ["GD_DW_ARGS", "GdConvNeXt", "gd_depthwise_like"]

# order 3 (N = 10 kernels per basis), one basis per 8 channels: 10 + 50/8 ≈ 16 parameters per channel, any k.
GD_DW_ARGS: dict[str, Any] = dict(order=3, channels_per_basis=8)


def gd_depthwise_like(conv: nn.Conv2d, order: int = 3, channels_per_basis: int | None = 8,
                      **gd_kwargs: Any) -> GDConv2d:
    """A GD depthwise layer with ``conv``'s channels, kernel size, stride, padding, dilation and bias (unfitted).

    ``channels_per_basis``: channels sharing one basis (must divide the width); ``None``: one basis per channel.

    Example:
        >>> gd_depthwise_like(nn.Conv2d(16, 16, 7, padding=3, groups=16)).num_bases
        2
    """
    if conv.groups != conv.in_channels or conv.in_channels != conv.out_channels:
        raise ValueError(f"expected a depthwise conv (groups = in = out channels), got {conv}")
    channels = conv.out_channels
    per = channels_per_basis or 1
    if channels % per:
        raise ValueError(f"channels_per_basis={channels_per_basis} does not divide the layer's {channels} channels")
    padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
    return GDConv2d(
        channels, channels, tuple(conv.kernel_size), stride=tuple(conv.stride), padding=padding,
        dilation=tuple(conv.dilation), bias=conv.bias is not None, padding_mode=conv.padding_mode, groups=channels,
        num_bases=channels // per, order=order, device=conv.weight.device, dtype=conv.weight.dtype, **gd_kwargs,
    )


class GdConvNeXt(ConvNeXt):
    """timm's :class:`~timm.models.convnext.ConvNeXt` with every block's depthwise ``conv_dw`` a GDConv2d."""

    def __init__(self, gd_dw_args: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        args = {**GD_DW_ARGS, **(gd_dw_args or {})}
        for stage in self.stages:
            for block in stage.blocks:
                if type(block.conv_dw) is not nn.Conv2d:  # timm's Conv2dSame (dynamic padding) is not reproduced
                    raise ValueError(f"GdConvNeXt needs static padding; got {type(block.conv_dw).__name__}")
                block.conv_dw = gd_depthwise_like(block.conv_dw, **args)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters timm's optimizer factory keeps out of weight decay: the GD kernels' σ, μ, θ."""
        return no_weight_decay_names(self)


def _create_gd_convnext(variant: str, pretrained: bool, **kwargs: Any) -> GdConvNeXt:
    """Mirror of ``timm.models.convnext._create_convnext`` (same feature cfg) for GdConvNeXt."""
    return build_gd_model(
        GdConvNeXt,
        variant,
        pretrained,
        pretrained_filter_fn=_convnext_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **kwargs,
    )


def _convnext_cfg(model_tag: str, **kwargs: Any) -> dict[str, Any]:
    return gd_cfg(
        model_tag,
        num_classes=1000,
        input_size=(3, 224, 224),
        pool_size=(7, 7),
        crop_pct=0.875,
        interpolation="bicubic",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="stem.0",
        classifier="head.fc",
        license="apache-2.0",
        **kwargs,
    )


default_cfgs = generate_default_cfgs({
    "gd_convnext_atto.untrained": _convnext_cfg("gd_convnext_atto.untrained"),
    "gd_convnext_atto_k31.untrained": _convnext_cfg("gd_convnext_atto_k31.untrained"),
})

ATTO_ARGS: dict[str, Any] = dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), conv_mlp=True)


@register_model
def gd_convnext_atto(pretrained: bool = False, **kwargs: Any) -> GdConvNeXt:
    """ConvNeXt-atto with 7×7 Gaussian-derivative depthwise convolutions (order 3, one basis per 8 channels)."""
    return _create_gd_convnext("gd_convnext_atto", pretrained, **dict(ATTO_ARGS, **kwargs))


@register_model
def gd_convnext_atto_k31(pretrained: bool = False, **kwargs: Any) -> GdConvNeXt:
    """``gd_convnext_atto`` with 31×31 GD depthwise kernels: the same parameter count as the 7×7 one."""
    return _create_gd_convnext("gd_convnext_atto_k31", pretrained, **dict(ATTO_ARGS, kernel_sizes=31, **kwargs))
