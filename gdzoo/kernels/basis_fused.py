"""The basis of eq. (1) from GDConv2d's raw parameters, through the fused Triton op where it serves.

:func:`gaussian_derivative_basis_raw` takes ``sigma_raw`` (``σ = σ_min + softplus(raw)`` folded in) and picks
the code (:mod:`.generator`): the torch custom op ``gdzoo::gd_basis`` (one Triton launch forward, one backward;
a fake implementation for ``torch.compile(fullgraph=True)``) or the torch ops of :mod:`.basis`. The op steps
aside where it cannot serve, and the torch ops give the same values there: forward-mode AD and ``torch.func``
transforms, ``torch.jit.trace``, ``torch.export`` (an exported graph of plain ops runs anywhere). Double backward
(``create_graph=True``) goes through the op's backward, which then recomputes the gradients with differentiable
torch ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import basis_triton
from .basis import (
    _axis_derivatives,
    _basis_vjp,
    _shifted_coordinates,
    derivative_orders,  # noqa: F401  (the example's name)
    gaussian_derivative_basis,
    gaussian_derivative_basis_reference,
)
from .generator import basis_code

__all__ = ["gaussian_derivative_basis_raw"]


@torch.library.custom_op("gdzoo::gd_basis", mutates_args=())
def gd_basis(sigma_raw: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, orders: torch.Tensor, sigma_min: float,
             kernel_h: int, kernel_w: int, max_order: int) -> torch.Tensor:
    """``(B, N, kH, kW)`` basis, one Triton launch (:func:`basis_triton.basis_forward`)."""
    return basis_triton.basis_forward(sigma_raw, mu, theta, orders, sigma_min, (kernel_h, kernel_w), max_order)


@gd_basis.register_fake
def _(sigma_raw, mu, theta, orders, sigma_min, kernel_h, kernel_w, max_order):
    return sigma_raw.new_empty((*theta.shape, kernel_h, kernel_w))


@torch.library.custom_op("gdzoo::gd_basis_backward", mutates_args=())
def gd_basis_backward(grad: torch.Tensor, sigma_raw: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor,
                      orders: torch.Tensor, sigma_min: float, kernel_h: int, kernel_w: int,
                      max_order: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(∂/∂sigma_raw, ∂/∂mu, ∂/∂theta)`` of ``Σ grad · basis``, one Triton launch."""
    return basis_triton.basis_backward(grad, sigma_raw, mu, theta, orders, sigma_min, (kernel_h, kernel_w), max_order)


@gd_basis_backward.register_fake
def _(grad, sigma_raw, mu, theta, orders, sigma_min, kernel_h, kernel_w, max_order):
    return torch.empty_like(sigma_raw), torch.empty_like(mu), torch.empty_like(theta)


def _setup_context(ctx, inputs, output) -> None:
    sigma_raw, mu, theta, orders, sigma_min, kernel_h, kernel_w, max_order = inputs
    ctx.save_for_backward(sigma_raw, mu, theta, orders)
    ctx.args = (sigma_min, kernel_h, kernel_w, max_order)


def _differentiable_vjp(grad: torch.Tensor, sigma_raw: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor,
                        orders: torch.Tensor, sigma_min: float, kernel_size: tuple[int, int],
                        max_order: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward as torch ops whose own graph is kept (``create_graph=True``: Hessian-vector products)."""
    sigma = sigma_min + F.softplus(sigma_raw)
    u, y = _shifted_coordinates(mu, theta, kernel_size)
    factors = _axis_derivatives(y, sigma, orders, extra=2, max_order=max_order)
    grad_sigma, grad_mu, grad_theta = _basis_vjp(grad, sigma, u, factors)
    return grad_sigma * torch.sigmoid(sigma_raw), grad_mu, grad_theta


def _backward(ctx, grad: torch.Tensor):
    sigma_raw, mu, theta, orders = ctx.saved_tensors
    sigma_min, kernel_h, kernel_w, max_order = ctx.args
    if torch.is_grad_enabled():  # create_graph=True: gradients that are themselves differentiable
        grads = _differentiable_vjp(grad, sigma_raw, mu, theta, orders, sigma_min, (kernel_h, kernel_w), max_order)
    else:
        grads = gd_basis_backward(grad, sigma_raw, mu, theta, orders, sigma_min, kernel_h, kernel_w, max_order)
    return (*(g if ctx.needs_input_grad[i] else None for i, g in enumerate(grads)), None, None, None, None, None)


gd_basis.register_autograd(_backward, setup_context=_setup_context)


def gaussian_derivative_basis_raw(
    sigma_raw: torch.Tensor,
    mu: torch.Tensor,
    theta: torch.Tensor,
    orders: torch.Tensor,
    kernel_size: tuple[int, int],
    sigma_min: float,
    max_order: int,
) -> torch.Tensor:
    """:func:`gaussian_derivative_basis` of ``σ = sigma_min + softplus(sigma_raw)``, fused on CUDA.

    Args:
        sigma_raw: ``(B, N, 2)`` unconstrained scales; mu: ``(B, N, 2)``; theta: ``(B, N)``; all one float dtype.
        orders: ``(N, 2)`` integer orders ``(p, q)``; max_order: a Python int ``>= orders.max()``.
        kernel_size: ``(kH, kW)``; sigma_min: the floor of σ.

    Returns:
        ``(B, N, kH, kW)`` kernels, differentiable in ``sigma_raw``, ``mu`` and ``theta``.

    Example:
        >>> orders = torch.tensor(derivative_orders(2))
        >>> raw, mu, theta = torch.zeros(4, 6, 2), torch.zeros(4, 6, 2), torch.zeros(4, 6)
        >>> gaussian_derivative_basis_raw(raw, mu, theta, orders, (7, 7), 0.1, 2).shape
        torch.Size([4, 6, 7, 7])
    """
    kh, kw = kernel_size
    code = basis_code(sigma_raw.device)  # the one place that chooses (see the module docstring)
    if code == "fused":
        return gd_basis(sigma_raw, mu, theta, orders, float(sigma_min), int(kh), int(kw), int(max_order))
    sigma = sigma_min + F.softplus(sigma_raw)
    generate = gaussian_derivative_basis_reference if code == "plain" else gaussian_derivative_basis
    return generate(sigma, mu, theta, orders, (kh, kw), max_order=max_order)
