"""Displaced aggregation units (DAU, Tabernik et al. CVPR 2018): isotropic Gaussians normalised on the kernel grid.

A unit centred at ``μ = (μ1, μ2)`` (taps from the kernel centre, same axes as :mod:`gdzoo.kernels.basis`) with
scale ``σ`` is ``g(x − μ; σ) / Σ_x g(x − μ; σ)`` over the ``(kH, kW)`` tap grid, ``g`` the 2-D isotropic
Gaussian. The isotropic Gaussian is the product of two 1-D ones and the grid is a product of two axes, so the
normalised unit is the outer product of two 1-D profiles, each normalised on its own axis; that is how it is
computed here (``kH + kW`` exponentials per unit instead of ``kH · kW``).
"""

from __future__ import annotations

import torch

from .basis import kernel_coordinates
from .gaussian import gaussian

__all__ = ["normalized_gaussian_profile", "displaced_gaussian_units"]


def normalized_gaussian_profile(coords: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``G(c − μ; σ) / Σ_c G(c − μ; σ)`` for every ``(μ, σ)`` pair: shape ``(*broadcast(mu, sigma), len(coords))``.

    Example:
        >>> p = normalized_gaussian_profile(torch.tensor([-1.0, 0.0, 1.0]), torch.tensor(0.0), torch.tensor(1.0))
        >>> p.shape, round(p.sum().item(), 6), round(p[1].item(), 4)
        (torch.Size([3]), 1.0, 0.4519)
    """
    values = gaussian(coords - mu.unsqueeze(-1), sigma.unsqueeze(-1))
    return values / values.sum(dim=-1, keepdim=True)


def displaced_gaussian_units(
    sigma: torch.Tensor, mu: torch.Tensor, kernel_size: tuple[int, int], factors: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Normalised isotropic Gaussians sampled on a ``(kH, kW)`` grid: ``(..., kH, kW)``, each summing to 1.

    Args:
        sigma: ``(...)`` scales (> 0).
        mu: ``(..., 2)`` centres ``(μ1, μ2)`` (horizontal, vertical) in taps from the kernel centre.
        kernel_size: ``(kH, kW)``.
        factors: return the vertical and horizontal profiles ``(..., kH)`` and ``(..., kW)`` whose outer
            product is the unit, instead of the unit itself.

    Example:
        >>> units = displaced_gaussian_units(torch.full((4, 10), 0.5), torch.zeros(4, 10, 2), (7, 7))
        >>> units.shape, torch.allclose(units.sum(dim=(-2, -1)), torch.ones(4, 10))
        (torch.Size([4, 10, 7, 7]), True)
    """
    x1, x2 = kernel_coordinates(kernel_size, device=sigma.device, dtype=sigma.dtype)
    vertical = normalized_gaussian_profile(x2[:, 0], mu[..., 1], sigma)  # (..., kH)
    horizontal = normalized_gaussian_profile(x1[0], mu[..., 0], sigma)  # (..., kW)
    if factors:
        return vertical, horizontal
    return vertical.unsqueeze(-1) * horizontal.unsqueeze(-2)
