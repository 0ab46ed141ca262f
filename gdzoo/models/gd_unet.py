"""``gd_unet`` / ``unet5``: the Gaussian U-net of the paper's Table 3 and its classical 5×5 counterpart.

Same topology for both (widths ``(8, 16, 16, 24)``, 3 max-pools)::

    encoder.0  conv(in → 8)  → BN → ReLU → conv(8 → 8)   → BN → ReLU              H
    encoder.1  maxpool 2 → conv(8 → 16) … conv(16 → 16)                            H/2
    encoder.2  maxpool 2 → conv(16 → 16) … conv(16 → 16)                           H/4
    encoder.3  maxpool 2 → conv(16 → 24) … conv(24 → 24)        (bottleneck)       H/8
    decoder.0  bilinear ×2, concat encoder.2 → conv(40 → 16) … conv(16 → 16)       H/4
    decoder.1  bilinear ×2, concat encoder.1 → conv(32 → 16) … conv(16 → 16)       H/2
    decoder.2  bilinear ×2, concat encoder.0 → conv(24 → 8)  … conv(8 → 8)         H
    head       1×1 conv(8 → num_classes)

- ``unet5``: free-form 5×5 ``nn.Conv2d``: 97,034 trainable parameters (paper: 97,202).
- ``gd_unet``: every 5×5 convolution is a GDConv2d of order 2 (N = 6) with one basis per 4 output
  channels: 25,178 trainable parameters (paper: 25,298). Order 2 is what makes the ratio match the
  paper's (~26 %): order 3 (N = 10) would give ~40 %.

Upsampling is parameter-free (bilinear), so every convolution with a spatial extent is a GDConv2d.
The 1×1 output convolution is a plain ``nn.Conv2d`` in both: a 1×1 Gaussian-derivative kernel is one
sample of the basis, i.e. a scaled channel mixing with nothing left to parameterise.

Any input size works: the input is zero-padded at the bottom/right to a multiple of ``2 ** 3`` (zero is
the dataset mean after normalisation, and what the convolutions' own padding uses) and the logits are
cropped back, so ``forward`` maps ``(N, in_chans, H, W)`` to ``(N, num_classes, H, W)``. Encoder
features are cropped to ``ceil(H / reduction)`` by parameter-free :class:`FeatureCrop` taps
(``feature_crops.i``, the ``feature_info`` modules), so ``features_only`` gives the same maps with
``feature_cls='getter'`` (``forward_intermediates``) and ``'fx'`` (graph nodes of those taps).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import get_device_dtype, register_notrace_function, register_notrace_module
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint

from ..layers import GDConv2d, no_weight_decay_names
from ._cfg import gd_cfg
from ._helpers import create_norm, init_free_form_convs
from .pretrained import build_gd_model

__all__ = ["UNet", "DoubleConv", "FeatureCrop", "UpBlock", "UNET_WIDTHS", "crop_to", "pad_to_multiple"]

UNET_WIDTHS = (8, 16, 16, 24)


class DoubleConv(nn.Module):
    """Optional 2×2 max-pool, then two conv → norm → ReLU: one U-net level."""

    def __init__(
        self, in_chs: int, out_chs: int, conv_args: dict[str, Any], norm: str = "batchnorm", downsample: bool = False,
        device: Any = None, dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.pool = nn.MaxPool2d(2) if downsample else nn.Identity()
        self.conv1 = _make_conv(in_chs, out_chs, **conv_args, **dd)
        self.norm1 = create_norm(norm, out_chs, **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = _make_conv(out_chs, out_chs, **conv_args, **dd)
        self.norm2 = create_norm(norm, out_chs, **dd)
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.norm1(self.conv1(self.pool(x))))
        return self.act2(self.norm2(self.conv2(x)))


class UpBlock(nn.Module):
    """Bilinear ×2 upsampling of the deeper map, concatenation with the skip, then a :class:`DoubleConv`."""

    def __init__(
        self, in_chs: int, skip_chs: int, out_chs: int, conv_args: dict[str, Any], norm: str,
        device: Any = None, dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.conv = DoubleConv(in_chs + skip_chs, out_chs, conv_args, norm=norm, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, x], dim=1))


@register_notrace_function  # reason: size-dependent control flow; one leaf call in FX graphs
def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the bottom/right of ``x`` so that H and W are multiples of ``multiple``."""
    ph, pw = (-x.shape[-2]) % multiple, (-x.shape[-1]) % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph))


@register_notrace_function  # reason: size-dependent slicing; one leaf call in FX graphs
def crop_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """The top-left ``ref.shape[-2:]`` window of ``x`` (undoes :func:`pad_to_multiple`)."""
    return x[..., : ref.shape[-2], : ref.shape[-1]]


@register_notrace_module  # reason: size-dependent slicing; one leaf call (a named FX node: a feature tap)
class FeatureCrop(nn.Module):
    """Feature tap: a padded level map cropped to ``ceil(H / reduction) × ceil(W / reduction)`` of the input ``ref``.

    Parameter-free. The padded map keeps flowing through the U-net; this crop is what feature
    extraction returns, the same for ``forward_intermediates`` and FX graph taps.
    """

    def __init__(self, reduction: int) -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        r = self.reduction
        return x[..., : (ref.shape[-2] + r - 1) // r, : (ref.shape[-1] + r - 1) // r]

    def extra_repr(self) -> str:
        return f"reduction={self.reduction}"


def _make_conv(
    in_chs: int,
    out_chs: int,
    conv_type: str = "gd",
    kernel_size: int = 5,
    filters_per_basis: int = 4,
    order: int = 2,
    separated: bool = False,
    gd_args: dict[str, Any] | None = None,
    device: Any = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """A bias-free 'same' conv: ``nn.Conv2d``, or a GDConv2d with one basis per ``filters_per_basis`` outputs."""
    dd = {"device": device, "dtype": dtype}
    if conv_type == "conv":
        return nn.Conv2d(in_chs, out_chs, kernel_size, padding=kernel_size // 2, bias=False, **dd)
    num_bases = max(1, out_chs // filters_per_basis)
    while out_chs % num_bases:
        num_bases -= 1
    return GDConv2d(
        in_chs, out_chs, kernel_size, bias=False, num_bases=num_bases, order=order, separated=separated,
        **(gd_args or {}), **dd,
    )


class UNet(nn.Module):
    """A U-net: ``len(widths)`` encoder levels (two convs each), bilinear decoder with skips, 1×1 output.

    Args:
        widths: channels per level, shallowest first; ``len(widths) - 1`` max-pools.
        conv_type: ``'gd'`` (GDConv2d) or ``'conv'`` (free-form ``nn.Conv2d``).
        kernel_size: spatial size of every (non-output) filter.
        filters_per_basis: GD output channels per basis (``num_bases = out // filters_per_basis``).
        order: highest Gaussian-derivative order K.
        separated: separated GD combination (eq. 4).
        gd_args: further GDConv2d keyword arguments for every GD layer.
        norm: ``'batchnorm'`` (default) or ``'fixed'``.
        in_chans: input channels; num_classes: output maps (logits).
        device, dtype: where and in which dtype every parameter and buffer is created (timm's factory kwargs).
    """

    task = "segmentation"  # read by the trainer and the Hub exporter (timm's PretrainedCfg has no task field)

    def __init__(
        self,
        widths: Sequence[int] = UNET_WIDTHS,
        conv_type: str = "gd",
        kernel_size: int = 5,
        filters_per_basis: int = 4,
        order: int = 2,
        separated: bool = False,
        gd_args: dict[str, Any] | None = None,
        norm: str = "batchnorm",
        in_chans: int = 3,
        num_classes: int = 2,
        drop_rate: float = 0.0,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if conv_type not in ("gd", "conv"):
            raise ValueError(f"conv_type must be 'gd' or 'conv', got {conv_type!r}")
        widths = tuple(widths)
        if len(widths) < 2:
            raise ValueError(f"a U-net needs at least two levels, got widths={widths}")
        conv_args = dict(
            conv_type=conv_type, kernel_size=kernel_size, filters_per_basis=filters_per_basis, order=order,
            separated=separated, gd_args=gd_args,
        )
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.depth = len(widths) - 1
        self.pad_multiple = 2**self.depth
        self.grad_checkpointing = False

        self.feature_info = []
        encoder, prev = [], in_chans
        for i, chs in enumerate(widths):
            encoder.append(DoubleConv(prev, chs, conv_args, norm=norm, downsample=i > 0, **dd))
            self.feature_info.append(dict(num_chs=chs, reduction=2**i, module=f"feature_crops.{i}"))
            prev = chs
        self.encoder = nn.ModuleList(encoder)
        self.feature_crops = nn.ModuleList([FeatureCrop(2**i) for i in range(len(widths))])
        decoder = []
        for chs in reversed(widths[:-1]):
            decoder.append(UpBlock(prev, chs, chs, conv_args, norm=norm, **dd))
            prev = chs
        self.decoder = nn.ModuleList(decoder)
        self.num_features = self.head_hidden_size = prev
        self.drop = nn.Dropout2d(drop_rate) if drop_rate > 0 else nn.Identity()
        self.head = nn.Conv2d(prev, num_classes, 1, **dd) if num_classes > 0 else nn.Identity()
        init_free_form_convs(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups: first level, encoder levels, then decoder levels (deepest first)."""
        return dict(stem=r"^encoder\.0\.", blocks=r"^encoder\.(\d+)", decoder=r"^decoder\.(\d+)")

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters timm's optimizer factory keeps out of weight decay: the GD kernels' σ, μ, θ."""
        return no_weight_decay_names(self)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each U-net level in backward instead of storing its activations."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The 1×1 output convolution (per-pixel classifier)."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New 1×1 output convolution with ``num_classes`` maps (0: identity, forward returns features)."""
        self.num_classes = num_classes
        dd = get_device_dtype(self)
        self.head = nn.Conv2d(self.num_features, num_classes, 1, **dd) if num_classes > 0 else nn.Identity()

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Encoder features of the levels in ``indices`` (level i at ``ceil(H / 2**i)``), and the final features.

        ``final`` is what :meth:`forward_head` takes (``forward_head(final) == forward(x)``): the last
        decoder map at ``H × W``. Without a full encoder and decoder (``stop_early`` cut, or decoder pruned
        by :meth:`prune_intermediate_layers`) it is the last encoder level that ran, cropped.
        """
        assert output_fmt == "NCHW", "Output shape must be NCHW."
        take_indices, max_index = feature_take_indices(len(self.encoder), indices)
        inp = x
        x = pad_to_multiple(x, self.pad_multiple)
        intermediates = []
        skips: list[torch.Tensor] = []
        stop = len(self.encoder) if torch.jit.is_scripting() or not stop_early else max_index + 1
        for i, (block, tap) in enumerate(zip(self.encoder, self.feature_crops)):
            if i >= stop:
                break
            x = checkpoint(block, x) if self.grad_checkpointing and not torch.jit.is_scripting() else block(x)
            skips.append(x)
            if i in take_indices:
                intermediates.append(tap(x, inp))
        if intermediates_only:
            return intermediates
        if stop < len(self.encoder) or len(self.decoder) == 0:
            return self.feature_crops[len(skips) - 1](x, inp), intermediates
        return self._decode(skips, inp), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Keep the encoder up to the last of ``indices``; drop the decoder and head (features only)."""
        take_indices, max_index = feature_take_indices(len(self.encoder), indices)
        self.encoder = self.encoder[: max_index + 1]
        self.feature_crops = self.feature_crops[: max_index + 1]
        if prune_head:
            self.decoder = nn.ModuleList()
            self.reset_classifier(0)
        return take_indices

    def _decode(self, skips: list[torch.Tensor], inp: torch.Tensor) -> torch.Tensor:
        """Decoder on the padded encoder maps ``skips`` (bottleneck last), cropped back to ``inp``'s size."""
        x = skips.pop()
        for up in self.decoder:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(up, x, skips.pop())
            else:
                x = up(x, skips.pop())
        return crop_to(x, inp)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last decoder map ``(N, num_features, H, W)``: the per-pixel features the 1×1 head classifies."""
        inp = x
        x = pad_to_multiple(x, self.pad_multiple)
        skips: list[torch.Tensor] = []
        for block, tap in zip(self.encoder, self.feature_crops):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x)
            else:
                x = block(x)
            skips.append(x)
            tap(x, inp)  # a free view; makes the cropped map a node that FX feature extraction can return
        return self._decode(skips, inp)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Per-pixel logits ``(N, num_classes, H, W)`` (the features themselves when ``pre_logits``)."""
        x = self.drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_unet(variant: str, pretrained: bool = False, **kwargs: Any) -> UNet:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_gd_model(
        UNet,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


def _unet_cfg(model: str, **kwargs: Any) -> dict[str, Any]:
    # MoNuSeg-style H&E tiles (paper: 128×128 crops of 512×512 images); ImageNet normalisation.
    return gd_cfg(
        f"{model}.monuseg",
        num_classes=2,
        input_size=(3, 128, 128),
        pool_size=None,
        crop_pct=1.0,
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="encoder.0.conv1",
        classifier="head",
        label_names=("background", "nucleus"),
        **kwargs,
    )


default_cfgs = generate_default_cfgs({
    "gd_unet.monuseg": _unet_cfg("gd_unet"),
    "unet5.monuseg": _unet_cfg("unet5"),
    "gd_unet_k7b2.monuseg": _unet_cfg("gd_unet_k7b2"),
})


@register_model
def gd_unet(pretrained: bool = False, **kwargs: Any) -> UNet:
    """Gaussian U-net: 5×5 GD layers of order 2, one basis per 4 outputs, widths (8, 16, 16, 24)."""
    model_args = dict(widths=UNET_WIDTHS, conv_type="gd", kernel_size=5, order=2, filters_per_basis=4)
    return _create_unet("gd_unet", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def gd_unet_k7b2(pretrained: bool = False, **kwargs: Any) -> UNet:
    """Gaussian U-net with more GD capacity in the same budget: 7×7 layers, one basis per 2 outputs (26,738
    parameters, 27.6 % of ``unet5``'s); chosen by cross-validation on MoNuSeg (docs/table3.md)."""
    model_args = dict(widths=UNET_WIDTHS, conv_type="gd", kernel_size=7, order=2, filters_per_basis=2)
    return _create_unet("gd_unet_k7b2", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def unet5(pretrained: bool = False, **kwargs: Any) -> UNet:
    """Classical U-net with free-form 5×5 filters, same topology as ``gd_unet``."""
    model_args = dict(widths=UNET_WIDTHS, conv_type="conv", kernel_size=5)
    return _create_unet("unet5", pretrained=pretrained, **dict(model_args, **kwargs))
