"""The plain-convolution twin of a GD model: the timm / gdzoo architecture its reparameterised weights load into.

Once trained, every GDConv2d (and DAUConv2d) is an ``nn.Conv2d`` (``reparameterize()``); the reparameterised
model's state dict, with the ``.reparam_conv`` level dropped, is then the state dict of a plain network gdzoo or
timm already defines. Deploying through that twin needs neither gdzoo nor custom layers at inference.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import UserError

__all__ = ["PLAIN_TWINS", "build_twin", "twin_state_dict"]

# GD model -> (plain architecture, its kwargs): the same layers with nn.Conv2d of the GD layers' kernel sizes
PLAIN_TWINS: dict[str, tuple[str, dict[str, Any]]] = {
    "gd_fmnist": ("ff_fmnist", {"kernel_size": 7}),
    "gd_fmnist_few": ("ff_fmnist", {"kernel_size": 7}),
    "gd_fmnist_sep": ("ff_fmnist", {"kernel_size": 7}),
    "rfnn_fmnist": ("ff_fmnist", {"kernel_size": 7}),
    "dau_fmnist": ("ff_fmnist", {"kernel_size": 7}),
    "gd_unet": ("unet5", {}),
    "gd_unet_k7b2": ("unet5", {"kernel_size": 7}),
    "gd_vgg16": ("vgg16", {}),
    "gd_vgg16_bn": ("vgg16_bn", {}),
    "gd_convnext_atto": ("convnext_atto", {}),
    "gd_convnext_atto_k31": ("convnext_atto", {"kernel_sizes": 31}),
}

_REPARAM = ".reparam_conv."


def twin_state_dict(reparameterized: nn.Module, architecture: str) -> dict[str, torch.Tensor]:
    """The plain twin's state dict: ``reparameterized``'s, each ``<layer>.reparam_conv.<p>`` renamed ``<layer>.<p>``.

    A separated GD layer that stays a 1×1 → depthwise → 1×1 sequence has no single-conv counterpart: refused.
    """
    state = {}
    for key, value in reparameterized.state_dict().items():
        if _REPARAM in key:
            layer, param = key.split(_REPARAM, 1)
            if "." in param:  # reparam_conv.0.weight: a factorised sequence
                raise UserError(f"{architecture}: layer {layer} is a factorised (1×1 → depthwise → 1×1) "
                                "separated GD layer with no single-convolution twin; export it as onnx or pt2 instead")
            key = f"{layer}.{param}"
        state[key] = value.detach().contiguous()
    return state


def build_twin(architecture: str, model: nn.Module) -> nn.Module:
    """The plain twin of ``model`` (a gdzoo model named ``architecture``), with its classes and input channels."""
    import timm

    if architecture not in PLAIN_TWINS:
        raise UserError(f"{architecture} has no plain-convolution twin for --format safetensors; models with one: "
                        f"{', '.join(sorted(PLAIN_TWINS))}. Use --format onnx or pt2")
    twin_name, kwargs = PLAIN_TWINS[architecture]
    kwargs = dict(kwargs, num_classes=model.num_classes, in_chans=_in_chans(model))
    return timm.create_model(twin_name, **kwargs).eval()


def _in_chans(model: nn.Module) -> int:
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d) or hasattr(m, "in_channels"))
    return int(first.in_channels)
