"""Argument checks and the raw-parameter transform shared by the Gaussian layers (GDConv2d, DAUConv2d) and the fits."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["PADDING_MODES", "float_pair", "inverse_softplus", "padding_arg", "positive_pair"]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """``x`` with ``softplus(x) = y`` (``y > 0``): how σ is stored, ``σ = σ_min + softplus(raw)``.

    Example:
        >>> y = torch.tensor([0.1, 1.0, 5.0], dtype=torch.float64)
        >>> torch.allclose(torch.nn.functional.softplus(inverse_softplus(y)), y)
        True
    """
    return y + torch.log(-torch.expm1(-y))


def positive_pair(name: str, value: int | Sequence[int]) -> tuple[int, int]:
    """``value`` as a pair of ints ``>= 1`` (an int is used twice), or a ValueError naming ``name``."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {value!r}")
    return pair  # type: ignore[return-value]


def float_pair(name: str, value: float | Sequence[float]) -> tuple[float, float]:
    """``value`` as a pair of finite floats (a number is used twice), or a ValueError naming ``name``."""
    pair = (value, value) if isinstance(value, (int, float)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{name} must be a float or a pair of floats, got {value!r}")
    if not all(math.isfinite(v) for v in pair):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(pair[0]), float(pair[1])


def padding_arg(value: str | int | Sequence[int], stride: tuple[int, int]) -> str | tuple[int, int]:
    """``nn.Conv2d``'s ``padding``: ``'same'`` (stride 1 only), ``'valid'``, or a pair of ints ``>= 0``."""
    if isinstance(value, str):
        if value not in ("same", "valid"):
            raise ValueError(f"padding must be 'same', 'valid', an int >= 0 or a pair of them, got {value!r}")
        if value == "same" and stride != (1, 1):
            raise ValueError(f"padding='same' is not supported for strided convolutions (stride={stride})")
        return value
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pair):
        raise ValueError(f"padding must be 'same', 'valid', an int >= 0 or a pair of them, got {value!r}")
    return pair  # type: ignore[return-value]
