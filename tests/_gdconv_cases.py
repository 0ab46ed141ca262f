"""The GDConv2d cases shared by the layer's test files: the four execution paths, a seeded layer, inputs and the
output recomputed without the kernel cache."""

from __future__ import annotations

from typing import Any

import torch

from gdzoo import GDConv2d
from gdzoo.layers.gd_functional import gd_conv2d_dense

F64 = torch.float64
PATHS = [(False, "dense"), (False, "basis"), (True, "dense"), (True, "factorized")]
PATH_IDS = [f"{'sep' if s else 'nonsep'}-{i}" for s, i in PATHS]


def make(separated: bool = False, impl: str = "auto", seed: int = 0, dtype: torch.dtype = torch.float32,
         **kwargs: Any) -> GDConv2d:
    torch.manual_seed(seed)
    m = GDConv2d(3, 4, kwargs.pop("kernel_size", 5), num_bases=2, order=2, separated=separated, impl=impl,
                 dtype=dtype, **kwargs)
    with torch.no_grad():
        if m.bias is not None:
            m.bias.uniform_(-0.5, 0.5)
    return m


def eager_reference(m: GDConv2d, x: torch.Tensor) -> torch.Tensor:
    """The layer's output recomputed from scratch: ``dense_weight()`` never touches the cache."""
    with torch.no_grad():
        return gd_conv2d_dense(x, m.dense_weight().to(x.dtype), m.bias, m.conv_spec)


def inputs(*shape: int, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
