"""1-D Gaussian derivatives through Hermite polynomials (pure functions, any order).

The paper writes the p-th derivative of the normalised Gaussian
``G(x, σ) = exp(-x² / 2σ²) / (√(2π) σ)`` as a (physicists') Hermite polynomial times the
Gaussian itself:

    G_p(x, σ) = (-1 / (√2 σ))^p · H_p(x / (√2 σ)) · G(x, σ).

``H_p`` is evaluated with the three-term recurrence ``H_{p+1}(t) = 2t H_p(t) − 2p H_{p−1}(t)``,
which is stable for the orders used in practice, unlike the explicit series.
"""

from __future__ import annotations

import math

import torch

__all__ = ["hermite_polynomials", "gaussian", "gaussian_derivative_1d"]


def hermite_polynomials(t: torch.Tensor, order: int) -> torch.Tensor:
    """Physicists' Hermite polynomials ``H_0 … H_order`` at ``t``, stacked on a new dim 0.

    Example:
        >>> hermite_polynomials(torch.tensor([0.0, 1.0]), 3)
        tensor([[ 1.,  1.],
                [ 0.,  2.],
                [-2.,  2.],
                [-0., -4.]])
    """
    if order < 0:
        raise ValueError(f"order must be >= 0, got {order}")
    polys = [torch.ones_like(t)]
    if order >= 1:
        polys.append(2.0 * t)
    for p in range(1, order):
        polys.append(2.0 * t * polys[p] - 2.0 * p * polys[p - 1])
    return torch.stack(polys, dim=0)


def gaussian(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Normalised 1-D Gaussian ``exp(-x²/2σ²) / (√(2π) σ)``.

    Example:
        >>> round(gaussian(torch.tensor(0.0), 1.0).item(), 6)
        0.398942
    """
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return torch.exp(-0.5 * (x / sigma) ** 2) / (math.sqrt(2.0 * math.pi) * sigma)


def gaussian_derivative_1d(x: torch.Tensor, sigma: torch.Tensor | float, order: int) -> torch.Tensor:
    """All derivatives ``G_0 … G_order`` of the Gaussian at ``x``, stacked on a new dim 0.

    ``sigma`` broadcasts against ``x``. Output shape: ``(order + 1, *broadcast(x, sigma).shape)``.

    Example:
        >>> g = gaussian_derivative_1d(torch.linspace(-3, 3, 7), 1.0, order=2)
        >>> g.shape
        torch.Size([3, 7])
        >>> round(g[1, 4].item(), 6)  # G'(1) = -1 · G(1)
        -0.241971
    """
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    scale = math.sqrt(2.0) * sigma
    hermite = hermite_polynomials(x / scale, order)
    powers = torch.arange(order + 1, dtype=x.dtype, device=x.device)
    powers = powers.view(-1, *([1] * (hermite.dim() - 1)))
    signs = 1.0 - 2.0 * (powers % 2)  # (-1)^p, kept out of pow() so negative bases never occur
    return signs * scale.unsqueeze(0) ** (-powers) * hermite * gaussian(x, sigma).unsqueeze(0)
