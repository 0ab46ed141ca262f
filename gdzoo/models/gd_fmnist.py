"""The paper's Fashion-MNIST network (Table 1): four convolutions, global average pooling, one linear layer.

Every variant has the same topology; only the convolution changes::

    stem      conv(in_chans → w0) → norm → ReLU                 28×28
    stages.0  maxpool 2 → conv(w0 → w1) → norm → ReLU           14×14
    stages.1  maxpool 2 → conv(w1 → w2) → norm → ReLU            7×7
    stages.2  conv(w2 → w3) → norm → ReLU                        7×7
    head      global average pool → Linear(w3 → num_classes)

- ``gd_fmnist`` ("Ours"): 7×7 GDConv2d, order K = 3 (N = 10 kernels per basis, the paper's
  "10 filters per basis"), one basis per 2 output channels, everything (σ, μ, θ, ω) trainable.
- ``gd_fmnist_few`` ("Ours-few"): half the bases of ``gd_fmnist`` in every layer (one per 4 outputs).
- ``gd_fmnist_sep`` ("Ours-separated"): ``gd_fmnist``'s bases with the separated combination
  ``λ·β`` of eq. (4), ~40 % fewer parameters (the paper: "a third less"; the number of bases is fixed
  by "same number of basis as Ours", and one basis per 2 outputs is the closest divisor).
- ``ff_fmnist`` (free-form baseline): plain 3×3 ``nn.Conv2d``, Kaiming (fan-in, ReLU) init.
- ``rfnn_fmnist`` (RFNN, Jacobsen et al. 2016): one fixed isotropic, unshifted, unrotated 7×7 basis
  per layer (σ = 1.5 in the first layer, 1.0 after), only the combination weights ω train.
- ``dau_fmnist`` (DAU-ConvNet, Tabernik et al. 2018): 7×7 :class:`~gdzoo.layers.DAUConv2d`, every filter a sum of
  10 displaced, normalised isotropic Gaussians ("the number of units for each filter took the value 10"), σ
  learned per unit ("σ was let being learned by the network for each unit").

``norm='fixed'`` (default) is the Table-1 protocol (BatchNorm with γ = 1, mean 0, variance 1 frozen,
only β trains: :class:`~gdzoo.models._helpers.FixedNorm2d`); ``norm='batchnorm'`` uses ``nn.BatchNorm2d``.
Convolutions carry no bias of their own: the norm's β is the bias.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from timm.layers import ClassifierHead, get_device_dtype
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq

from ..layers import DAUConv2d, GDConv2d, no_weight_decay_names
from ._cfg import gd_cfg
from ._helpers import create_norm, init_free_form_convs
from .pretrained import build_gd_model

__all__ = ["FmnistNet", "ConvNormAct", "FMNIST_MEAN", "FMNIST_STD", "FMNIST_LABELS"]

# Fashion-MNIST's pixel statistics and class names (the one definition; gdzoo.data re-exports them)
FMNIST_MEAN = (0.2860,)
FMNIST_STD = (0.3530,)
FMNIST_LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FMNIST_WIDTHS = (16, 32, 32, 64)
FMNIST_DOWNSAMPLE = (False, True, True, False)


class ConvNormAct(nn.Module):
    """Optional 2×2 max-pool, then conv → norm → ReLU: one layer of the Fashion-MNIST network."""

    def __init__(
        self, conv: nn.Module, out_chs: int, norm: str = "fixed", downsample: bool = False,
        device: Any = None, dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2) if downsample else nn.Identity()
        self.conv = conv
        self.norm = create_norm(norm, out_chs, device=device, dtype=dtype)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(self.pool(x))))


def _per_layer(name: str, value: Any, n: int) -> tuple:
    values = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else (value,) * n
    if len(values) != n:
        raise ValueError(f"{name} needs one value or {n} (one per layer), got {value!r}")
    return values


class FmnistNet(nn.Module):
    """Four conv-norm-ReLU layers, global average pooling and a linear classifier (paper, Table 1).

    Args:
        widths: output channels of the four layers.
        conv_type: ``'gd'`` (GDConv2d), ``'dau'`` (DAUConv2d) or ``'conv'`` (free-form ``nn.Conv2d``).
        kernel_size: spatial size of every filter.
        num_bases: GD bases per layer (int or one per layer); must divide the layer's width.
        order: highest Gaussian-derivative order K (N = (K+1)(K+2)/2 kernels per basis).
        separated: separated combination (eq. 4) in every GD layer.
        sigma_init: GD ``sigma_init`` (float or one per layer), used when ``gd_args['init'] == 'fixed'``.
        gd_args: further GDConv2d keyword arguments for every layer (``init``, ``trainable``, ``impl``...).
        dau_args: DAUConv2d keyword arguments for every layer (``units``, ``sigma_init``, ``sigma_trainable``...).
        downsample: a 2×2 max-pool in front of each layer (True/False per layer).
        norm: ``'fixed'`` (Table-1 protocol) or ``'batchnorm'``.
        in_chans, num_classes, global_pool, drop_rate: as in timm models.
        device, dtype: where and in which dtype every parameter and buffer is created (timm's factory kwargs).
    """

    def __init__(
        self,
        widths: Sequence[int] = FMNIST_WIDTHS,
        conv_type: str = "gd",
        kernel_size: int = 7,
        num_bases: int | Sequence[int] = 1,
        order: int = 3,
        separated: bool = False,
        sigma_init: float | Sequence[float] = 1.0,
        gd_args: dict[str, Any] | None = None,
        dau_args: dict[str, Any] | None = None,
        downsample: Sequence[bool] = FMNIST_DOWNSAMPLE,
        norm: str = "fixed",
        in_chans: int = 1,
        num_classes: int = 10,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if conv_type not in ("gd", "dau", "conv"):
            raise ValueError(f"conv_type must be 'gd', 'dau' or 'conv', got {conv_type!r}")
        widths = tuple(widths)
        n = len(widths)
        num_bases = _per_layer("num_bases", num_bases, n)
        sigma_init = _per_layer("sigma_init", sigma_init, n)
        downsample = _per_layer("downsample", downsample, n)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        layers = []
        self.feature_info = []
        prev, reduction = in_chans, 1
        for i, (chs, bases, sigma, down) in enumerate(zip(widths, num_bases, sigma_init, downsample)):
            if conv_type == "gd":
                conv: nn.Module = GDConv2d(
                    prev, chs, kernel_size, bias=False, num_bases=bases, order=order,
                    separated=separated, sigma_init=sigma, **(gd_args or {}), **dd,
                )
            elif conv_type == "dau":
                conv = DAUConv2d(prev, chs, kernel_size, bias=False, **(dau_args or {}), **dd)
            else:
                conv = nn.Conv2d(prev, chs, kernel_size, padding=kernel_size // 2, bias=False, **dd)
            layers.append(ConvNormAct(conv, chs, norm=norm, downsample=down, **dd))
            reduction *= 2 if down else 1
            module = "stem" if i == 0 else f"stages.{i - 1}"
            self.feature_info.append(dict(num_chs=chs, reduction=reduction, module=module))
            prev = chs
        self.stem = layers[0]
        self.stages = nn.Sequential(*layers[1:])
        self.num_features = self.head_hidden_size = prev
        self.head = ClassifierHead(prev, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        init_free_form_convs(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise LR decay: the stem, then one group per stage."""
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)")

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters timm's optimizer factory keeps out of weight decay: the GD kernels' σ, μ, θ (DAU: σ, μ)."""
        return no_weight_decay_names(self)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the stages in backward instead of storing their activations."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The final linear layer."""
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier (``num_classes=0``: identity, the model then returns pooled features)."""
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool, **get_device_dtype(self))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Forward features, also returning the outputs of the layers in ``indices`` (0 = stem … 3)."""
        assert output_fmt == "NCHW", "Output shape must be NCHW."
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        x = self.stem(x)
        if 0 in take_indices:
            intermediates.append(x)
        if torch.jit.is_scripting() or not stop_early:
            stages = self.stages
        else:
            stages = self.stages[:max_index]
        for i, stage in enumerate(stages):
            x = stage(x)
            if i + 1 in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the layers after the last of ``indices`` (and the head) for feature extraction."""
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        self.stages = self.stages[:max_index]
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled features ``(N, num_features, H/4, W/4)``."""
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x)
        else:
            x = self.stages(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pooling, then the classifier (skipped when ``pre_logits``)."""
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


def _create_fmnist(variant: str, pretrained: bool = False, **kwargs: Any) -> FmnistNet:
    return build_gd_model(
        FmnistNet,
        variant,
        pretrained,
        # timm's default hook-free list wrapper (as ResNet/VGG): feature models keep the classifier's
        # parameter names (stem.*, stages_<i>.*); feature_cls='getter' also works (forward_intermediates).
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **kwargs,
    )


def _fmnist_cfg(model: str, tag: str = "fmnist", **kwargs: Any) -> dict[str, Any]:
    return gd_cfg(
        f"{model}.{tag}",
        num_classes=10,
        input_size=(1, 28, 28),
        pool_size=(7, 7),
        mean=FMNIST_MEAN,
        std=FMNIST_STD,
        label_names=FMNIST_LABELS,
        first_conv="stem.conv",
        classifier="head.fc",
        **kwargs,
    )


default_cfgs = generate_default_cfgs({
    "gd_fmnist.fmnist": _fmnist_cfg("gd_fmnist"),
    "gd_fmnist_few.fmnist": _fmnist_cfg("gd_fmnist_few"),
    "gd_fmnist_sep.fmnist": _fmnist_cfg("gd_fmnist_sep"),
    "ff_fmnist.fmnist": _fmnist_cfg("ff_fmnist"),
    "rfnn_fmnist.fmnist": _fmnist_cfg("rfnn_fmnist"),
    "dau_fmnist.fmnist": _fmnist_cfg("dau_fmnist"),
    # The 60000-image runs of the paper's protocol (docs/table1.md), kept when the zoo recipe's runs
    # (docs/zoo_fmnist.md) took the default tag, so Table 1 and docs/robustness.md stay reproducible.
    **{f"{m}.fmnist_table1": _fmnist_cfg(m, "fmnist_table1")
       for m in ("gd_fmnist", "gd_fmnist_few", "gd_fmnist_sep", "ff_fmnist", "rfnn_fmnist")},
})


def _bases(filters_per_basis: int) -> tuple[int, ...]:
    return tuple(w // filters_per_basis for w in FMNIST_WIDTHS)


@register_model
def gd_fmnist(pretrained: bool = False, **kwargs: Any) -> FmnistNet:
    """"Ours": 7×7 fully trainable GD layers, order 3, one basis per 2 output channels."""
    model_args = dict(conv_type="gd", kernel_size=7, order=3, num_bases=_bases(2))
    return _create_fmnist("gd_fmnist", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def gd_fmnist_few(pretrained: bool = False, **kwargs: Any) -> FmnistNet:
    """"Ours-few": as ``gd_fmnist`` with half the bases in every layer (one per 4 output channels)."""
    model_args = dict(conv_type="gd", kernel_size=7, order=3, num_bases=_bases(4))
    return _create_fmnist("gd_fmnist_few", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def gd_fmnist_sep(pretrained: bool = False, **kwargs: Any) -> FmnistNet:
    """"Ours-separated": ``gd_fmnist``'s bases with the separated combination of eq. (4)."""
    model_args = dict(conv_type="gd", kernel_size=7, order=3, num_bases=_bases(2), separated=True)
    return _create_fmnist("gd_fmnist_sep", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def ff_fmnist(pretrained: bool = False, **kwargs: Any) -> FmnistNet:
    """Free-form baseline: the same network with plain 3×3 convolutions."""
    model_args = dict(conv_type="conv", kernel_size=3)
    return _create_fmnist("ff_fmnist", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def rfnn_fmnist(pretrained: bool = False, **kwargs: Any) -> FmnistNet:
    """RFNN baseline: one fixed isotropic order-3 basis per layer (σ 1.5 then 1.0); only ω trains."""
    model_args = dict(
        conv_type="gd", kernel_size=7, order=3, num_bases=1, sigma_init=(1.5, 1.0, 1.0, 1.0),
        gd_args=dict(init="fixed", mu_init=0.0, theta_init=0.0, trainable=()),
    )
    return _create_fmnist("rfnn_fmnist", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def dau_fmnist(pretrained: bool = False, **kwargs: Any) -> FmnistNet:
    """DAU-ConvNet baseline: 7×7 DAUConv2d layers, 10 units per filter, σ learned per unit (init 0.5)."""
    model_args = dict(conv_type="dau", kernel_size=7, dau_args=dict(units=10, sigma_init=0.5, sigma_trainable=True))
    return _create_fmnist("dau_fmnist", pretrained=pretrained, **dict(model_args, **kwargs))
