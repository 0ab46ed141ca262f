"""An independent float64 CPU reference of ``GDConv2d``, written from the paper's equations.

It shares no code with :mod:`gdzoo.kernels` or :mod:`gdzoo.layers`: the kernels come from the
explicit Hermite series (not the recurrence), the combination from ``einsum`` (not ``bmm``), and
the gradients from plain autograd (not the layer's analytic backward).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gdzoo import GDConv2d

F64 = torch.float64


def hermite_series(t: torch.Tensor, p: int) -> torch.Tensor:
    """Physicists' ``H_p(t)`` from the explicit series ``Σ_i (-1)^i p! / (i! (p-2i)!) (2t)^(p-2i)``."""
    return sum(
        (-1) ** i * math.factorial(p) / (math.factorial(i) * math.factorial(p - 2 * i)) * (2 * t) ** (p - 2 * i)
        for i in range(p // 2 + 1)
    )


def gaussian_derivative(y: torch.Tensor, sigma: torch.Tensor, p: int) -> torch.Tensor:
    """``G_p(y; σ) = (-1/(√2σ))^p H_p(y/(√2σ)) exp(-y²/2σ²) / (√(2π)σ)``."""
    scale = math.sqrt(2.0) * sigma
    gauss = torch.exp(-(y**2) / (2 * sigma**2)) / (math.sqrt(2 * math.pi) * sigma)
    return (-1.0 / scale) ** p * hermite_series(y / scale, p) * gauss


def reference_basis(sigma: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, order: int,
                    kernel_size: tuple[int, int]) -> torch.Tensor:
    """``(B, N, kH, kW)`` kernels of eq. (1): ``φ_{p,q}[r, c] = G_p(y1; σ1) G_q(y2; σ2)``."""
    kh, kw = kernel_size
    x2, x1 = torch.meshgrid(torch.arange(kh, dtype=F64) - (kh - 1) / 2, torch.arange(kw, dtype=F64) - (kw - 1) / 2,
                            indexing="ij")
    orders = [(p, n - p) for n in range(order + 1) for p in range(n + 1)]
    kernels = []
    for b in range(sigma.shape[0]):
        row = []
        for n, (p, q) in enumerate(orders):
            c, s = torch.cos(theta[b, n]), torch.sin(theta[b, n])
            y1 = x1 * c + x2 * s - mu[b, n, 0]
            y2 = -x1 * s + x2 * c - mu[b, n, 1]
            row.append(gaussian_derivative(y1, sigma[b, n, 0], p) * gaussian_derivative(y2, sigma[b, n, 1], q))
        kernels.append(torch.stack(row))
    return torch.stack(kernels)


def reference_params(layer: GDConv2d) -> dict[str, torch.Tensor]:
    """The layer's parameters as float64 CPU leaves that require grad (same names as the layer's)."""
    return {name: p.detach().to("cpu", F64).requires_grad_(True) for name, p in layer.named_parameters()}


def reference_forward(layer: GDConv2d, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Eqs. (1)–(4) then a float64 ``F.conv2d`` with ``layer``'s stride, padding and dilation (zero padding)."""
    if layer.padding_mode != "zeros":
        raise NotImplementedError("the reference covers padding_mode='zeros'")
    sigma = layer.sigma_min + F.softplus(params["sigma_raw"])
    phi = reference_basis(sigma, params["mu_raw"], params["theta_raw"], layer.order, layer.kernel_size)
    per = layer.out_channels // layer.num_bases
    phi_out = phi.repeat_interleave(per, dim=0)  # (out, N, kH, kW): output o uses basis o // per
    if layer.separated:
        beta = params["weight_in"].repeat_interleave(per, dim=0)  # (out, N, in)
        weight = torch.einsum("on,oni,onhw->oihw", params["weight_out"], beta, phi_out)
    else:
        weight = torch.einsum("oin,onhw->oihw", params["weight"], phi_out)
    return F.conv2d(x, weight, params.get("bias"), layer.stride, layer.padding, layer.dilation)


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str) -> None:
    """``max |actual − expected| ≤ rtol · max |expected|`` (on CPU, float64): one scale per tensor."""
    actual, expected = actual.detach().to("cpu", F64), expected.detach().to("cpu", F64)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert err <= rtol * max(scale, 1e-12), f"{what}: max error {err:.3g} > {rtol:g} × {scale:.3g}"


def assert_close_norm(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str) -> None:
    """``‖actual − expected‖ ≤ rtol · ‖expected‖``: for deep networks, where a max-pool or ReLU near-tie may flip."""
    actual, expected = actual.detach().to("cpu", F64), expected.detach().to("cpu", F64)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    err, scale = (actual - expected).norm().item(), expected.norm().item()
    assert err <= rtol * max(scale, 1e-12), f"{what}: relative error {err / max(scale, 1e-12):.3g} > {rtol:g}"
