"""Steering trained GD layers: rotate and rescale every Gaussian-derivative kernel analytically.

Derivation (eq. (1), gdzoo's conventions in :mod:`gdzoo.kernels.basis`: ``x1`` to the right, ``x2``
down, ``u = R(θ)x`` with ``R(θ) = [[cos θ, sin θ], [−sin θ, cos θ]]``, ``y = u − μ``,
``φ_{p,q}(x) = G_p(y1; σ1) G_q(y2; σ2)`` with the *normalised* Gaussian's derivatives ``G_p``).
A layer's kernel is ``k(x) = Σ_n w_n φ_n(x)`` and PyTorch correlates: ``out(p) = Σ_x k(x) in(p + x)``.

* Rotation. ``torchvision.transforms.functional.rotate(img, a)`` (counter-clockwise on screen) moves
  the content at ``p`` to ``R(a)p`` (the same matrix ``R``, with ``x2`` pointing down). The kernel that
  sees the rotated image as ``k`` saw the original is ``k'(x) = k(R(a)⁻¹x)``, and
  ``R(θ)R(a)⁻¹ = R(θ − a)``: rotating is ``θ' = θ − a`` for every kernel, nothing else changes (the
  shifts ``μ`` live in the rotated frame and turn with it). The output map is the rotated original.
* Rescaling. An image resized by ``s`` has ``in'(p) = in(p / s)``. ``out'(sp) = out(p)`` requires
  ``k'(x) = k(x / s) / s²`` (the ``1/s²`` keeps the sum over ``s²`` times more taps equal). For the
  normalised Gaussian, ``G_p(t/s − μ; σ) = s^{p+1} G_p(t − sμ; sσ)``, so
  ``φ_{p,q}(x/s; σ, μ, θ) / s² = s^{p+q} φ_{p,q}(x; sσ, sμ, θ)``: rescaling is ``σ' = sσ``,
  ``μ' = sμ`` and ``w'_n = s^{p_n+q_n} w_n``. The grid grows to keep the support: the smallest size
  ``≥ s·k`` with the parity of ``k`` (odd stays odd, so 'same' padding stays centred); ``sigma_min``
  scales with ``s`` so every ``σ'`` is representable.

Exact where sampling allows: a 90° rotation of a square odd kernel is a permutation of its taps, so
a network of stride-1 GD convolutions, pointwise layers, even-sized pooling and global pooling is
exactly equivariant. Other angles and scales are exact for the continuous kernels and approximate
on the grid (interpolation of the input, pooling grids, σ below a pixel when downscaling).
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from ._params import inverse_softplus
from .kernel_cache import CachedKernelConv

if TYPE_CHECKING:  # annotations only: gd_conv imports this module (GDConv2d.steered), not the other way round
    from .gd_conv import GDConv2d

__all__ = ["steer", "steer_gdconv", "steering_problems"]


def _is_gd_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a GDConv2d (or a subclass): its class sets ``steer_as_gd``. An attribute, not
    ``isinstance``, so that this module needs no import of the class whose ``steered`` method calls it."""
    return getattr(type(module), "steer_as_gd", False) is True


def _check_transform(scale: float, angle: float) -> tuple[float, float]:
    for name, value in (("scale", scale), ("angle", angle)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if scale <= 0:
        raise ValueError(f"scale must be > 0 (the input's resize factor), got {scale!r}")
    return float(scale), float(angle)


def _steered_size(size: int, scale: float) -> int:
    """The smallest kernel size ``>= scale·size`` with the parity of ``size`` (at least 1 or 2)."""
    new = max(1, math.ceil(scale * size - 1e-9))
    return new + 1 if (new - size) % 2 else new


def _same_like_padding(layer: GDConv2d) -> bool:
    if layer.padding == "same":
        return True
    if isinstance(layer.padding, str):
        return False
    kh, kw = layer.kernel_size
    return kh % 2 == 1 and kw % 2 == 1 and tuple(layer.padding) == ((kh - 1) // 2, (kw - 1) // 2)


def _gd_problem(layer: GDConv2d) -> str | None:
    if hasattr(layer, "reparam_conv"):
        return "reparameterized into a plain convolution (steer before reparameterize())"
    if tuple(layer.stride) != (1, 1) or tuple(layer.dilation) != (1, 1):
        return f"stride {tuple(layer.stride)} / dilation {tuple(layer.dilation)} (only 1 is steerable)"
    if not _same_like_padding(layer):
        return f"padding {layer.padding!r} (only 'same' or the centred (k-1)/2 is steerable)"
    return None


def _conv_problem(conv: nn.Module) -> str | None:
    """Free-form convolutions are steerable only when pointwise (1×1, stride 1): those commute with any warp."""
    kernel, stride = tuple(conv.kernel_size), tuple(conv.stride)
    if isinstance(conv, nn.modules.conv._ConvTransposeNd) or any(k != 1 for k in kernel) or any(s != 1 for s in stride):
        return (f"free-form {type(conv).__name__} with kernel {kernel}, stride {stride} "
                "(only GDConv2d and 1×1 convs steer)")
    return None


def steering_problems(model: nn.Module) -> dict[str, str]:
    """``{module name: reason}`` for every part of ``model`` that :func:`steer` cannot re-pose."""
    problems: dict[str, str] = {}
    for name, module in model.named_modules():
        if _is_gd_layer(module):
            reason = _gd_problem(module)
        elif isinstance(module, nn.modules.conv._ConvNd) and not _inside_gd(model, name):
            reason = _conv_problem(module)
        elif isinstance(module, CachedKernelConv):  # e.g. DAUConv2d: generated kernels steer cannot re-pose
            reason = f"{type(module).__name__} (only GDConv2d layers are re-posed)"
        else:
            reason = None
        if reason:
            problems[name or type(model).__name__] = reason
    return problems


def _inside_gd(model: nn.Module, name: str) -> bool:
    """True for modules owned by a GDConv2d (its ``reparam_conv``): reported through the GD layer."""
    parent = name.rpartition(".")[0]
    return bool(name) and _is_gd_layer(model.get_submodule(parent) if parent else model)


@torch.no_grad()
def steer_gdconv(layer: GDConv2d, scale: float = 1.0, angle: float = 0.0) -> GDConv2d:
    """A copy of ``layer`` for inputs resized by ``scale`` and rotated by ``angle`` degrees (see the module doc).

    Example:
        >>> from gdzoo.layers import GDConv2d
        >>> layer = GDConv2d(2, 4, 7, num_bases=2, order=2)
        >>> steered = steer_gdconv(layer, scale=2.0, angle=30.0)
        >>> steered.kernel_size, steered.dense_weight().shape
        ((15, 15), torch.Size([4, 2, 15, 15]))
    """
    scale, angle = _check_transform(scale, angle)
    if not _is_gd_layer(layer):
        raise TypeError(f"steer_gdconv needs a GDConv2d, got {type(layer).__name__}")
    problem = _gd_problem(layer)
    if problem:
        raise ValueError(f"this GDConv2d cannot be steered: {problem}")
    steered = copy.deepcopy(layer)
    steered.kernel_size = tuple(_steered_size(k, scale) for k in layer.kernel_size)
    if not isinstance(layer.padding, str):
        steered.padding = tuple((k - 1) // 2 for k in steered.kernel_size)
    steered.sigma_min = layer.sigma_min * scale
    sigma = layer.sigma.double() * scale
    sigma_raw = inverse_softplus(sigma - steered.sigma_min)  # s·softplus(raw) = softplus(sigma_raw)
    steered.sigma_raw.copy_(sigma_raw.to(layer.sigma_raw.dtype))
    steered.mu_raw.copy_((layer.mu_raw.double() * scale).to(layer.mu_raw.dtype))
    steered.theta_raw.copy_((layer.theta_raw.double() - math.radians(angle)).to(layer.theta_raw.dtype))
    total_order = steered.orders_index.sum(dim=1).double()  # p + q of each of the N kernels
    gain = torch.as_tensor(scale, dtype=torch.float64).pow(total_order)
    if layer.separated:
        steered.weight_out.copy_((layer.weight_out.double() * gain).to(layer.weight_out.dtype))
    else:
        steered.weight.copy_((layer.weight.double() * gain).to(layer.weight.dtype))
    steered._cache = None
    return steered


def steer(model: nn.Module, scale: float = 1.0, angle: float = 0.0, partial: bool = False) -> nn.Module:
    """A steered copy of ``model``: the model for inputs resized by ``scale`` and rotated by ``angle`` degrees.

    ``steer(m, angle=a)(rotate(x, a)) ≈ m(x)`` (torchvision's counter-clockwise ``rotate``) and
    ``steer(m, scale=s)(resize(x, s)) ≈ m(x)`` for models with global pooling. Every GDConv2d is
    re-posed analytically (:func:`steer_gdconv`); pointwise layers, norms, activations and pooling
    are kept. Free-form convolutions larger than 1×1, strided or dilated GD layers and reparameterized
    layers cannot be steered: a ``ValueError`` names them, unless ``partial=True`` (then the rest is
    steered and a warning names what was not). The input model is left unchanged.

    Example:
        >>> import timm, gdzoo
        >>> model = timm.create_model('gd_fmnist').eval()
        >>> x = torch.randn(1, 1, 28, 28)
        >>> rotated = torch.rot90(x, 1, dims=(-2, -1))  # = torchvision rotate(x, 90) on a square image
        >>> torch.allclose(steer(model, angle=90)(rotated), model(x), atol=1e-4)
        True
    """
    scale, angle = _check_transform(scale, angle)
    problems = steering_problems(model)
    if problems and not partial:
        listed = "; ".join(f"{name}: {reason}" for name, reason in problems.items())
        raise ValueError(f"{type(model).__name__} cannot be steered: {listed}. Pass partial=True to steer the rest.")
    steered = copy.deepcopy(model)
    for name, module in list(steered.named_modules()):
        if _is_gd_layer(module) and name not in problems:
            new = steer_gdconv(module, scale, angle)
            if name:
                steered.set_submodule(name, new)
            else:
                steered = new
    if problems:
        warnings.warn(f"steer(partial=True): not steered: {', '.join(problems)}", stacklevel=2)
    return steered
