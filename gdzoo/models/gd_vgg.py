"""``gd_vgg16`` / ``gd_vgg16_bn``: timm's VGG16 whose first convolution is a GDConv2d (paper, Table 2).

Everything except ``features.0`` is timm's own ``timm.models.vgg.VGG`` (its cfgs, head, pre-logits
ConvMlp, feature taps, weight init and torchvision-checkpoint filter). ``features.0`` becomes
``GDConv2d(in_chans, 64, 3, padding=1, num_bases=16, order=2)``: 3×3 like the layer it replaces (so the
rest of an ImageNet VGG16 checkpoint loads unchanged), order 2 because a 3×3 support holds only 9
independent taps (N = 6 kernels per basis; order 3's N = 10 would be over-complete), and one basis per
4 output channels (16 bases, the authors' own example ratio). Override with ``gd_stem_args=dict(...)``.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model
from timm.models.vgg import VGG
from timm.models.vgg import _filter_fn as _vgg_filter_fn
from timm.models.vgg import cfgs as vgg_cfgs

from ..layers import GDConv2d, no_weight_decay_names
from ._cfg import gd_cfg
from .pretrained import build_gd_model

__all__ = ["GdVGG", "GD_STEM_ARGS"]

GD_STEM_ARGS: dict[str, Any] = dict(num_bases=16, order=2)


class GdVGG(VGG):
    """timm's :class:`~timm.models.vgg.VGG` with ``features.0`` replaced by a 3×3 GDConv2d."""

    def __init__(self, cfg: list[Any], gd_stem_args: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(cfg, **kwargs)
        first = self.features[0]
        factory = {"device": first.weight.device, "dtype": first.weight.dtype}
        stem_args = {**GD_STEM_ARGS, **(gd_stem_args or {})}
        self.features[0] = GDConv2d(first.in_channels, first.out_channels, 3, padding=1, **stem_args, **factory)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters timm's optimizer factory keeps out of weight decay: the GD kernels' σ, μ, θ."""
        return no_weight_decay_names(self)


def _filter_fn(state_dict: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm's VGG filter (torchvision ``classifier.*`` -> ``pre_logits`` / ``head``); it takes no model argument."""
    return _vgg_filter_fn(state_dict)


def _create_gd_vgg(variant: str, pretrained: bool, **kwargs: Any) -> GdVGG:
    """Mirror of ``timm.models.vgg._create_vgg`` (same model cfg, feature cfg and filter) for GdVGG.

    ``build_gd_model`` is timm's ``build_model_with_cfg`` plus gdzoo's GD-stem ``in_chans`` adaptation.
    """
    cfg = variant.split("_")[1]  # 'gd_vgg16_bn' -> 'vgg16'
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3, 4, 5))  # VGG taps stride-1 features too
    return build_gd_model(
        GdVGG,
        variant,
        pretrained,
        model_cfg=vgg_cfgs[cfg],
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        pretrained_filter_fn=_filter_fn,
        **kwargs,
    )


def _vgg_cfg(model_tag: str, **kwargs: Any) -> dict[str, Any]:
    return gd_cfg(
        model_tag,
        num_classes=1000,
        input_size=(3, 224, 224),
        pool_size=(7, 7),
        crop_pct=0.875,
        interpolation="bilinear",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="features.0",
        classifier="head.fc",
        license="bsd-3-clause",  # as timm's vgg16.tv_in1k, the torchvision weights it starts from
        **kwargs,
    )


default_cfgs = generate_default_cfgs({
    "gd_vgg16.tv_in1k": _vgg_cfg("gd_vgg16.tv_in1k"),
    "gd_vgg16_bn.tv_in1k": _vgg_cfg("gd_vgg16_bn.tv_in1k"),
})


@register_model
def gd_vgg16(pretrained: bool = False, **kwargs: Any) -> GdVGG:
    """VGG16 (configuration "D") with a Gaussian-derivative first layer."""
    return _create_gd_vgg("gd_vgg16", pretrained=pretrained, **kwargs)


@register_model
def gd_vgg16_bn(pretrained: bool = False, **kwargs: Any) -> GdVGG:
    """VGG16 with batch normalisation and a Gaussian-derivative first layer."""
    model_args = dict(norm_layer=torch.nn.BatchNorm2d, **kwargs)
    return _create_gd_vgg("gd_vgg16_bn", pretrained=pretrained, **model_args)
