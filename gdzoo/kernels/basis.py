"""2-D anisotropic, shifted and rotated Gaussian-derivative kernels, eq. (1) of the paper.

Conventions (shared by every other part of gdzoo): the tap at row ``r``, column ``c`` of a
``(kH, kW)`` kernel sits at ``x1 = c − (kW−1)/2`` (horizontal) and ``x2 = r − (kH−1)/2``
(vertical). The rotated coordinates are ``u1 = x1 cosθ + x2 sinθ``, ``u2 = −x1 sinθ + x2 cosθ``,
the shifted ones ``y = u − μ``, and ``φ_{p,q}[r, c] = G_p(y1; σ1) · G_q(y2; σ2)``.
"""

from __future__ import annotations

import torch

from .gaussian import gaussian_derivative_1d

__all__ = ["derivative_orders", "num_basis_kernels", "kernel_coordinates", "gaussian_derivative_basis"]


def derivative_orders(order: int) -> list[tuple[int, int]]:
    """Every ``(p, q)`` with ``p + q <= order``, in the authors' order.

    Example:
        >>> derivative_orders(2)
        [(0, 0), (0, 1), (1, 0), (0, 2), (1, 1), (2, 0)]
    """
    if not isinstance(order, int) or isinstance(order, bool) or order < 0:
        raise ValueError(f"order must be an int >= 0, got {order!r}")
    return [(p, n - p) for n in range(order + 1) for p in range(n + 1)]


def num_basis_kernels(order: int) -> int:
    """Kernels in a basis of order ``K``: ``(K+1)(K+2)/2``.

    Example:
        >>> num_basis_kernels(3)
        10
    """
    return (order + 1) * (order + 2) // 2


def kernel_coordinates(
    kernel_size: tuple[int, int], device: torch.device | None = None, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tap coordinates ``(x1, x2)``, each of shape ``(kH, kW)``, centred on the kernel.

    Example:
        >>> x1, x2 = kernel_coordinates((2, 3))
        >>> x1
        tensor([[-1.,  0.,  1.],
                [-1.,  0.,  1.]])
        >>> x2
        tensor([[-0.5000, -0.5000, -0.5000],
                [ 0.5000,  0.5000,  0.5000]])
    """
    kh, kw = kernel_size
    rows = torch.arange(kh, device=device, dtype=dtype) - (kh - 1) / 2
    cols = torch.arange(kw, device=device, dtype=dtype) - (kw - 1) / 2
    x2, x1 = torch.meshgrid(rows, cols, indexing="ij")
    return x1, x2


def _rotated_coordinates(
    theta: torch.Tensor, kernel_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u1, u2)`` of every tap for every angle: each ``(..., N, kH, kW)``."""
    x1, x2 = kernel_coordinates(kernel_size, device=theta.device, dtype=theta.dtype)
    cos_t = torch.cos(theta)[..., None, None]
    sin_t = torch.sin(theta)[..., None, None]
    return x1 * cos_t + x2 * sin_t, -x1 * sin_t + x2 * cos_t


def _axis_derivatives(
    y: torch.Tensor, sigma: torch.Tensor, orders: torch.Tensor, extra: int, max_order: int | None = None
) -> torch.Tensor:
    """``G_{o+e}(y_a; σ_a)`` for e in 0..extra, per axis a: ``(extra+1, ..., N, kH, kW, 2)``.

    ``max_order`` (a Python int ``>= orders.max()``) avoids reading ``orders`` on the host, which
    would be a device sync and a data-dependent graph break under ``torch.compile``.
    """
    max_order = (int(orders.max()) if max_order is None else max_order) + extra
    derivs = gaussian_derivative_1d(y, sigma[..., None, None, :], max_order)  # (K+1+extra, ..., N, kH, kW, 2)
    shape = (1, *([1] * (derivs.dim() - 5)), -1, 1, 1, 2)
    base = orders.to(device=derivs.device).view(shape)
    index = torch.cat([base + e for e in range(extra + 1)], dim=0).expand(extra + 1, *derivs.shape[1:])
    return torch.gather(derivs, 0, index)


class _GaussianDerivativeBasis(torch.autograd.Function):
    """Basis sampling with an analytic backward (far fewer ops than autograd through the recurrence).

    It uses ``∂G_p/∂y = G_{p+1}`` and the heat equation ``∂G_p/∂σ = σ·G_{p+2}``; ``∂y/∂μ = −1`` and
    ``∂(u1, u2)/∂θ = (u2, −u1)``.
    """

    @staticmethod
    def forward(ctx, sigma, mu, theta, orders, kernel_size, max_order=None):  # noqa: ANN001, ANN205
        u1, u2 = _rotated_coordinates(theta, kernel_size)
        u = torch.stack((u1, u2), dim=-1)
        y = u - mu[..., None, None, :]
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        factors = _axis_derivatives(y, sigma, orders, extra=2 if need_grad else 0, max_order=max_order)
        if need_grad:
            ctx.save_for_backward(sigma, u, factors)
        return factors[0, ..., 0] * factors[0, ..., 1]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        sigma, u, factors = ctx.saved_tensors
        g0, g1, g2 = factors[0], factors[1], factors[2]
        weighted = grad.unsqueeze(-1) * g0.flip(-1)  # dφ/d(axis-a factor) · grad
        grad_y = weighted * g1  # (..., N, kH, kW, 2)
        grad_sigma = sigma * (weighted * g2).sum(dim=(-3, -2))
        grad_mu = -grad_y.sum(dim=(-3, -2))
        grad_theta = (grad_y[..., 0] * u[..., 1] - grad_y[..., 1] * u[..., 0]).sum(dim=(-2, -1))
        return grad_sigma, grad_mu, grad_theta, None, None, None


def gaussian_derivative_basis(
    sigma: torch.Tensor,
    mu: torch.Tensor,
    theta: torch.Tensor,
    orders: torch.Tensor,
    kernel_size: tuple[int, int],
    max_order: int | None = None,
) -> torch.Tensor:
    """Sample every kernel ``φ^{b,n}`` of eq. (1) on the tap grid in one vectorised pass.

    Differentiable in ``sigma``, ``mu`` and ``theta`` (first order, analytic backward).

    Args:
        sigma: ``(..., N, 2)`` scales ``(σ1, σ2)``, positive.
        mu: ``(..., N, 2)`` shifts ``(μ1, μ2)`` in taps.
        theta: ``(..., N)`` angles in radians.
        orders: ``(N, 2)`` integer derivative orders ``(p, q)`` of each kernel.
        kernel_size: ``(kH, kW)``.
        max_order: optional Python int ``>= orders.max()``. Pass it to avoid reading ``orders`` on
            the host (no device sync, no graph break under ``torch.compile``); the result is the same.

    Returns:
        ``(..., N, kH, kW)`` kernels.

    Example:
        >>> orders = torch.tensor(derivative_orders(1))
        >>> basis = gaussian_derivative_basis(
        ...     torch.ones(4, 3, 2), torch.zeros(4, 3, 2), torch.zeros(4, 3), orders, (7, 7))
        >>> basis.shape
        torch.Size([4, 3, 7, 7])
    """
    return _GaussianDerivativeBasis.apply(sigma, mu, theta, orders, tuple(kernel_size), max_order)
