"""2-D anisotropic, shifted and rotated Gaussian-derivative kernels, eq. (1) of the paper.

Conventions (shared by every other part of gdzoo): the tap at row ``r``, column ``c`` of a
``(kH, kW)`` kernel sits at ``x1 = c − (kW−1)/2`` (horizontal) and ``x2 = r − (kH−1)/2``
(vertical). The rotated coordinates are ``u1 = x1 cosθ + x2 sinθ``, ``u2 = −x1 sinθ + x2 cosθ``,
the shifted ones ``y = u − μ``, and ``φ_{p,q}[r, c] = G_p(y1; σ1) · G_q(y2; σ2)``.
"""

from __future__ import annotations

import functools
import math

import torch

from .gaussian import gaussian_derivative_1d
from .generator import basis_code

__all__ = [
    "ORDER_RTOL",
    "accurate_order",
    "derivative_orders",
    "num_basis_kernels",
    "kernel_coordinates",
    "gaussian_derivative_basis",
    "gaussian_derivative_basis_reference",
]


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


def _shifted_coordinates(
    mu: torch.Tensor, theta: torch.Tensor, kernel_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u, y)``: rotated tap coordinates ``u`` and shifted ones ``y = u − μ``, each ``(..., N, kH, kW, 2)``."""
    u1, u2 = _rotated_coordinates(theta, kernel_size)
    u = torch.stack((u1, u2), dim=-1)
    return u, u - mu[..., None, None, :]


def _basis_vjp(
    grad: torch.Tensor, sigma: torch.Tensor, u: torch.Tensor, factors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(∂/∂σ, ∂/∂μ, ∂/∂θ)`` of ``Σ grad · φ`` from ``factors = G_{o+e}`` (e = 0, 1, 2) of both axes."""
    g0, g1, g2 = factors[0], factors[1], factors[2]
    weighted = grad.unsqueeze(-1) * g0.flip(-1)  # dφ/d(axis-a factor) · grad
    grad_y = weighted * g1  # (..., N, kH, kW, 2)
    grad_sigma = sigma * (weighted * g2).sum(dim=(-3, -2))
    grad_mu = -grad_y.sum(dim=(-3, -2))
    grad_theta = (grad_y[..., 0] * u[..., 1] - grad_y[..., 1] * u[..., 0]).sum(dim=(-2, -1))
    return grad_sigma, grad_mu, grad_theta


class _GaussianDerivativeBasis(torch.autograd.Function):
    """Basis sampling with an analytic backward (far fewer ops than autograd through the recurrence).

    It uses ``∂G_p/∂y = G_{p+1}`` and the heat equation ``∂G_p/∂σ = σ·G_{p+2}``; ``∂y/∂μ = −1`` and
    ``∂(u1, u2)/∂θ = (u2, −u1)``.

    Higher-order derivatives are exact: the backward (and the forward-mode ``jvp``) is itself made of
    differentiable torch ops. When the engine asks for a differentiable backward (``create_graph=True``,
    e.g. a Hessian-vector product), the ``G_{p+1}``, ``G_{p+2}`` factors are recomputed from the saved
    σ, μ, θ with autograd on, so their own dependence on the geometry is part of the graph; otherwise the
    factors computed by the forward are reused. ``setup_context`` and ``generate_vmap_rule`` make the
    function usable under ``torch.func`` (``grad``, ``vjp``, ``vmap``, ``jacrev``); forward mode (``jvp``,
    ``jacfwd``, ``hessian``, ``torch.autograd.forward_ad``) is :class:`_GaussianDerivativeBasisFwd`'s.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(sigma, mu, theta, orders, kernel_size, max_order, extra):
        # The factors and rotated coordinates are outputs only so that setup_context can save them.
        u, y = _shifted_coordinates(mu, theta, kernel_size)
        factors = _axis_derivatives(y, sigma, orders, extra=extra, max_order=max_order)
        return factors[0, ..., 0] * factors[0, ..., 1], factors, u

    @staticmethod
    def setup_context(ctx, inputs, output):
        sigma, mu, theta, orders, kernel_size, max_order, extra = inputs
        _, factors, u = output
        ctx.mark_non_differentiable(factors, u)
        ctx.kernel_size, ctx.max_order = kernel_size, max_order
        ctx.has_factors = extra >= 2
        ctx.save_for_backward(sigma, mu, theta, orders, *((factors, u) if ctx.has_factors else (None, None)))
        ctx.save_for_forward(sigma, mu, theta, orders)

    @staticmethod
    def backward(ctx, grad, _grad_factors, _grad_u):
        sigma, mu, theta, orders, factors, u = ctx.saved_tensors
        if torch.is_grad_enabled() or not ctx.has_factors:
            # create_graph=True: the factors and coordinates must carry their dependence on σ, μ, θ (the
            # forward's ones do not), so they are recomputed here with autograd on.
            u, y = _shifted_coordinates(mu, theta, ctx.kernel_size)
            factors = _axis_derivatives(y, sigma, orders, extra=2, max_order=ctx.max_order)
        grads = _basis_vjp(grad, sigma, u, factors)
        return (*(g if ctx.needs_input_grad[i] else None for i, g in enumerate(grads)), None, None, None, None)


class _GaussianDerivativeBasisFwd(_GaussianDerivativeBasis):
    """:class:`_GaussianDerivativeBasis` plus forward-mode AD (``jvp``): used only while forward AD can be
    asked for, since ``torch.compile`` cannot trace an ``autograd.Function`` that defines ``jvp``."""

    @staticmethod
    def jvp(ctx, d_sigma, d_mu, d_theta, *_):
        sigma, mu, theta, orders = ctx.saved_tensors
        u, y = _shifted_coordinates(mu, theta, ctx.kernel_size)
        factors = _axis_derivatives(y, sigma, orders, extra=2, max_order=ctx.max_order)
        g0, g1, g2 = factors[0], factors[1], factors[2]
        d_y = torch.zeros_like(y)
        if d_theta is not None:  # ∂(u1, u2)/∂θ = (u2, −u1)
            d_y = d_y + torch.stack((u[..., 1], -u[..., 0]), dim=-1) * d_theta[..., None, None, None]
        if d_mu is not None:
            d_y = d_y - d_mu[..., None, None, :]
        d_factor = g1 * d_y  # (..., N, kH, kW, 2): change of each axis factor
        if d_sigma is not None:
            d_factor = d_factor + sigma[..., None, None, :] * d_sigma[..., None, None, :] * g2
        d_basis = (d_factor * g0.flip(-1)).sum(dim=-1)
        return d_basis, None, None


# basis_code's answers that are autograd Functions of this module
_FUNCTIONS = {"function": _GaussianDerivativeBasis, "function_fwd": _GaussianDerivativeBasisFwd}


def gaussian_derivative_basis(
    sigma: torch.Tensor,
    mu: torch.Tensor,
    theta: torch.Tensor,
    orders: torch.Tensor,
    kernel_size: tuple[int, int],
    max_order: int | None = None,
) -> torch.Tensor:
    """Sample every kernel ``φ^{b,n}`` of eq. (1) on the tap grid in one vectorised pass.

    Differentiable in ``sigma``, ``mu`` and ``theta`` (analytic backward; higher orders, forward mode and
    ``torch.func`` transforms are exact too).

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
    max_order = int(orders.max()) if max_order is None else int(max_order)
    need_grad = torch.is_grad_enabled() and (sigma.requires_grad or mu.requires_grad or theta.requires_grad)
    function = _FUNCTIONS[basis_code(sigma.device, raw=False)]
    # With gradients to come, the forward also evaluates G_{o+1}, G_{o+2} once for the backward.
    basis, _, _ = function.apply(
        sigma, mu, theta, orders, tuple(kernel_size), max_order, 2 if need_grad else 0
    )
    return basis


def gaussian_derivative_basis_reference(
    sigma: torch.Tensor,
    mu: torch.Tensor,
    theta: torch.Tensor,
    orders: torch.Tensor,
    kernel_size: tuple[int, int],
    max_order: int | None = None,
) -> torch.Tensor:
    """``gaussian_derivative_basis`` as plain torch ops (no custom ``autograd.Function``).

    Same values; its gradients come from autograd through the Hermite recurrence. Used where a
    graph of ordinary ops is wanted (``torch.jit.trace``) and as a reference in the tests.
    """
    max_order = int(orders.max()) if max_order is None else int(max_order)
    _, y = _shifted_coordinates(mu, theta, tuple(kernel_size))
    factors = _axis_derivatives(y, sigma, orders, extra=0, max_order=max_order)
    return factors[0, ..., 0] * factors[0, ..., 1]


# A basis is "accurate" in a dtype when every kernel is within this fraction of its largest value of float64's.
ORDER_RTOL = 1e-3


def _worst_case_error(order: int, kernel_size: tuple[int, int], sigma_min: float, dtype: torch.dtype) -> float:
    """Largest relative error (against float64; inf when not finite) of the 1-D factors ``G_0 … G_order`` of eq. (1) in
    ``dtype``, where a ``kernel_size`` grid can sample them: ``|y|`` up to the grid's corner plus a shift of 1 (the init
    range), for σ from its floor up. Each basis kernel is a product of two such factors, so their accuracy is its
    accuracy, as long as the product of the largest two stays finite (checked too)."""
    reach = math.hypot((kernel_size[0] - 1) / 2, (kernel_size[1] - 1) / 2) + 1.0
    y = torch.linspace(-reach, reach, 513, dtype=torch.float64, device="cpu")  # also under a meta default device
    worst = 0.0
    for sigma in (sigma_min * (1 + 1e-6), 2.0 * sigma_min, 0.5, 1.0, 2.0):
        exact = gaussian_derivative_1d(y, sigma, order)
        got = gaussian_derivative_1d(y.to(dtype), sigma, order)
        peak = got.abs().amax(dim=1)
        if not (torch.isfinite(got).all() and torch.isfinite(exact).all() and torch.isfinite(peak.max() ** 2)):
            return math.inf
        worst = max(worst, ((got.double() - exact).abs().amax(dim=1) / exact.abs().amax(dim=1)).max().item())
    return worst


@functools.lru_cache(maxsize=256)
def accurate_order(order: int, kernel_size: tuple[int, int], sigma_min: float,
                   dtype: torch.dtype = torch.float32) -> int:
    """The highest order ``<= order`` whose basis ``dtype`` evaluates finite and within :data:`ORDER_RTOL` of float64
    on a ``kernel_size`` grid for σ ≥ ``sigma_min`` (−1 when none is; float64 is only checked to be finite). Hermite
    terms grow like ``(r/σ)^K`` at the kernel's edge ``r``: high orders overflow float32, then float64, large grids
    first.

    Example:
        >>> accurate_order(3, (7, 7), 0.1), accurate_order(60, (7, 7), 0.1) < 30
        (3, True)
    """
    tolerance = math.inf if dtype == torch.float64 else ORDER_RTOL  # float64: finite is all that can be checked

    def accurate(k: int) -> bool:
        e = _worst_case_error(k, tuple(kernel_size), sigma_min, dtype)
        return math.isfinite(e) and e <= tolerance

    if accurate(order):
        return order
    good, bad = -1, order  # errors grow with the order: bisect for the last accurate one
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if accurate(mid) else (good, mid)
    return good
