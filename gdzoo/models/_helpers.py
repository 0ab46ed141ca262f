"""Small pieces shared by gdzoo's model families: the norm factory and FX leaf registration."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.layers import register_notrace_module

from ..layers import DAUConv2d, GDConv2d

__all__ = ["NORMS", "FixedNorm2d", "create_norm", "init_free_form_convs"]

# GDConv2d's forward validates its input and caches generated kernels with Python control flow that
# torch.fx cannot trace symbolically: FX graphs keep it as one leaf call (like timm's own ConvMlp).
register_notrace_module(GDConv2d)
register_notrace_module(DAUConv2d)  # same kernel cache

NORMS = ("fixed", "batchnorm")


class FixedNorm2d(nn.Module):
    """The paper's Table-1 normalisation: BatchNorm with γ = 1, mean 0, √(var + ε) = 1 frozen; only β trains.

    ``γ·(x − 0)/1 + β`` is exactly ``x + β``, so this module *is* that frozen BatchNorm, stored as one
    per-channel bias ``bias`` (β) instead of a BatchNorm2d whose γ and running statistics never change.
    """

    def __init__(self, num_features: int, device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.num_features = num_features
        self.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias.view(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}"


def create_norm(norm: str, num_features: int, device: Any = None, dtype: torch.dtype | None = None) -> nn.Module:
    """``'fixed'`` → :class:`FixedNorm2d` (the paper's Table-1 protocol), ``'batchnorm'`` → ``nn.BatchNorm2d``."""
    dd = {"device": device, "dtype": dtype}
    if norm == "fixed":
        return FixedNorm2d(num_features, **dd)
    if norm == "batchnorm":
        return nn.BatchNorm2d(num_features, **dd)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


@torch.no_grad()
def init_free_form_convs(model: nn.Module) -> None:
    """Kaiming (fan-in, ReLU) for every ``nn.Conv2d``, so the fixed-norm protocol (no rescaling) trains.

    GDConv2d and DAUConv2d layers are left alone: they initialise themselves variance-preservingly
    (He-style, see ``GDConv2d._init_combination`` and ``DAUConv2d._init_weight``).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
