"""Kernel-space fit of a GD basis to free-form kernels (variable projection, batched restarts, L-BFGS polish).

For a fixed geometry (σ, μ, θ) the best combination weights ``c`` are a linear least-squares solve per basis, so
the geometry is optimised with ``c`` eliminated: the residual of basis ``b`` only needs the ``(P, P)`` Gram matrix
``M_b = Σ t tᵀ`` of its target kernels (``P = kH·kW`` taps), so one step costs the same for 3 or 512 input
channels. Several random restarts run batched; each basis keeps its best restart, then L-BFGS polishes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..kernels import derivative_orders, gaussian_derivative_basis
from ._params import inverse_softplus
from .fit_common import RIDGE, _adam, _basis_rows, _check_target, _polish, relative_error
from .gd_conv import GEOMETRY_NAMES

__all__ = ["GeometryFit", "combination_lstsq", "fit_gd_kernel", "subspace_bound"]


@dataclass
class GeometryFit:
    """Raw geometry parameters (as stored by GDConv2d) and the least-squares combination weights."""

    sigma_raw: torch.Tensor  # (B, N, 2)
    mu_raw: torch.Tensor  # (B, N, 2)
    theta_raw: torch.Tensor  # (B, N)
    weight: torch.Tensor  # (out, in, N)
    kernel_error: float



def subspace_bound(target: torch.Tensor, num_bases: int, num_kernels: int) -> float:
    """Lowest relative error of any ``num_kernels``-dimensional basis per group of outputs (SVD).

    Example:
        >>> w = torch.randn(4, 3, 3, 3)
        >>> subspace_bound(w, 1, 9) < 1e-6, 0.0 < subspace_bound(w, 1, 2) < 1.0
        (True, True)
    """
    _check_target(target, num_bases)
    s = torch.linalg.svdvals(_basis_rows(target.double(), num_bases))  # (B, min(rows, P))
    rest = s[:, num_kernels:].pow(2).sum()
    return float((rest / s.pow(2).sum().clamp_min(1e-30)).sqrt())


def combination_lstsq(target: torch.Tensor, basis: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """Least-squares combination weights ``c`` with ``W[o,i] ≈ Σ_n c[o,i,n] · basis[b(o), n]``.

    Args:
        target: ``(out, in, kH, kW)`` free-form weight.
        basis: ``(B, N, kH, kW)`` kernels; basis ``b`` serves outputs ``b·out/B … (b+1)·out/B − 1``.
        ridge: Tikhonov term relative to the largest diagonal entry of ``ΦΦᵀ`` (keeps ``c`` bounded
            when the ``N`` kernels are nearly dependent, e.g. order 3 on a 3×3 support).

    Returns:
        ``(out, in, N)`` weights, the layout of ``GDConv2d.weight``.

    Example:
        >>> basis = torch.randn(2, 6, 3, 3, dtype=torch.float64)
        >>> c = torch.randn(8, 3, 6, dtype=torch.float64)
        >>> w = torch.einsum("bjin,bnhw->bjihw", c.view(2, 4, 3, 6), basis).reshape(8, 3, 3, 3)
        >>> torch.allclose(combination_lstsq(w, basis), c, atol=1e-5)
        True
    """
    num_bases, n = basis.shape[:2]
    _check_target(target, num_bases)
    out, cin = target.shape[:2]
    phi = basis.reshape(num_bases, n, -1).double()  # (B, N, P)
    gram = phi @ phi.transpose(-1, -2)  # (B, N, N)
    lam = ridge * gram.diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(1e-30)
    gram = gram + lam[:, None, None] * torch.eye(n, dtype=gram.dtype, device=gram.device)
    rhs = phi @ _basis_rows(target.double(), num_bases).transpose(-1, -2)  # (B, N, rows)
    coef = torch.linalg.solve(gram, rhs).transpose(-1, -2)  # (B, rows, N)
    return coef.reshape(out, cin, n).to(target.dtype)



def _target_moment(rows: torch.Tensor) -> torch.Tensor:
    """The targets' Gram ``M_b = T_bᵀT_b`` ``(B, P, P)`` or, when a basis serves fewer kernels than it has taps
    (depthwise layers, large kernels: ``R < P``), the rows ``T_b`` ``(B, R, P)`` themselves: every product
    with ``M`` is then taken through ``T`` (``R/P`` of the cost; a 51×51 ``M`` per channel would not fit).

    Example:
        >>> _target_moment(torch.randn(2, 30, 9)).shape, _target_moment(torch.randn(2, 1, 49)).shape
        (torch.Size([2, 9, 9]), torch.Size([2, 1, 49]))
    """
    return rows if rows.shape[-2] < rows.shape[-1] else rows.transpose(-1, -2) @ rows


def _projection_residual(phi: torch.Tensor, moment: torch.Tensor, ridge: float) -> torch.Tensor:
    """``‖T − c(Φ)Φ‖²`` per basis from ``Φ (..., B, N, P)`` and the targets' Gram ``M (B, P, P)``
    (or their rows ``T (B, R, P)``, see :func:`_target_moment`).

    With ``A = ΦΦᵀ + λI``, ``c = TΦᵀA⁻¹`` and ``‖T − cΦ‖² = tr M − 2 tr(A⁻¹G) + tr(A⁻¹GA⁻¹ΦΦᵀ)`` where
    ``G = ΦMΦᵀ``: only ``N×N`` and ``P×P`` products, independent of the number of target kernels.
    """
    n = phi.shape[-2]
    gram = phi @ phi.transpose(-1, -2)
    lam = ridge * gram.diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(1e-30).detach()
    a = gram + lam[..., None, None] * torch.eye(n, dtype=phi.dtype, device=phi.device)
    if moment.shape[-2] == moment.shape[-1]:
        g = phi @ moment @ phi.transpose(-1, -2)
        trace_m = moment.diagonal(dim1=-2, dim2=-1).sum(-1)
    else:  # rows T: G = (ΦTᵀ)(ΦTᵀ)ᵀ, tr M = ‖T‖²
        pt = phi @ moment.transpose(-1, -2)
        g = pt @ pt.transpose(-1, -2)
        trace_m = moment.pow(2).sum((-2, -1))
    s = torch.linalg.solve(a, g)  # A⁻¹G
    quad = torch.linalg.solve(a, gram)  # A⁻¹ΦΦᵀ
    return trace_m - 2 * s.diagonal(dim1=-2, dim2=-1).sum(-1) + (s @ quad.transpose(-1, -2)).diagonal(
        dim1=-2, dim2=-1
    ).sum(-1)



def _restart_geometry(
    restarts: int, num_bases: int, order: int, kernel_size: tuple[int, int], sigma_min: float,
    generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw ``(R, B, N, ·)`` starting points: restart 0 is the classic N-jet (σ = 0.8·k/3, μ = 0, θ = 0),
    the others draw σ ~ U[0.5, 1.5]·k/3, μ ~ U[−0.5, 0.5], θ ~ U[−π, π]."""
    n = len(derivative_orders(order))
    scale = max(kernel_size) / 3.0
    shape = (restarts, num_bases, n)
    sigma = (0.5 + torch.rand(*shape, 2, generator=generator, dtype=torch.float64)) * scale
    mu = torch.rand(*shape, 2, generator=generator, dtype=torch.float64) - 0.5
    theta = (2 * torch.rand(*shape, generator=generator, dtype=torch.float64) - 1) * math.pi
    sigma[0], mu[0], theta[0] = 0.8 * scale, 0.0, 0.0
    sigma = sigma.clamp_min(sigma_min + 0.05)
    return inverse_softplus(sigma - sigma_min), mu, theta



def _subspace_start(
    moment: torch.Tensor,
    orders: torch.Tensor,
    order: int,
    kernel_size: tuple[int, int],
    sigma_min: float,
    fixed: list[torch.Tensor],
    trainable: tuple[str, ...],
    candidates: int,
    steps: int,
    gen: torch.Generator,
) -> list[torch.Tensor]:
    """A starting geometry ``(B, N, ·)`` from the targets' best ``N``-dim subspace (top eigenvectors of ``M_b``).

    The ``N`` kernels of an exact fit each lie in that subspace, so every kernel is searched on its
    own: ``candidates`` random geometries per kernel (σ up to half the kernel size, |μ| up to a quarter),
    Adam on the relative distance of the kernel to the subspace, best candidate kept. Decoupled,
    this finds the geometry of GD-generated targets that the joint, non-convex problem often misses
    (a kernel stuck on a direction another covers).
    """
    num_bases, n = fixed[2].shape
    p = moment.shape[-1]
    if n >= p:  # every kernel lies in the span
        return fixed
    if moment.shape[-2] == p:
        _, vecs = torch.linalg.eigh(moment)  # ascending
        outside, inside = vecs[..., : p - n], None  # (B, P, P-N): complement of the best subspace
    else:  # rows (R < P): the best subspace is (within) their row space; measure the part inside it
        inside = torch.linalg.svd(moment, full_matrices=False)[2][..., :n, :].transpose(-1, -2)  # (B, P, ≤N)
    shape, reach = (candidates, num_bases, n), max(kernel_size) / 2.0
    sigma = sigma_min + 0.2 + torch.rand(*shape, 2, generator=gen, dtype=torch.float64) * (reach - 0.2)
    mu = (2 * torch.rand(*shape, 2, generator=gen, dtype=torch.float64) - 1) * reach / 2
    theta = (2 * torch.rand(*shape, generator=gen, dtype=torch.float64) - 1) * math.pi
    starts = [inverse_softplus(sigma - sigma_min), mu, theta]
    starts = [s if name in trainable else f.expand_as(s).clone() for name, s, f in zip(GEOMETRY_NAMES, starts, fixed)]
    params = [s.requires_grad_(name in trainable) for name, s in zip(GEOMETRY_NAMES, starts)]

    def distance(sigma_raw: torch.Tensor, mu_raw: torch.Tensor, theta_raw: torch.Tensor) -> torch.Tensor:
        phi = gaussian_derivative_basis(sigma_min + F.softplus(sigma_raw), mu_raw, theta_raw, orders, kernel_size,
                                        order)
        phi = phi.flatten(-2)  # (S, B, N, P)
        norm_sq = phi.pow(2).sum(-1).clamp_min(1e-30)
        if inside is not None:
            return 1.0 - (phi @ inside.unsqueeze(0)).pow(2).sum(-1) / norm_sq
        off = phi @ outside.unsqueeze(0)  # (S, B, N, P-N)
        return off.pow(2).sum(-1) / norm_sq  # (S, B, N)

    _adam(params, distance, steps, 0.05)
    with torch.no_grad():
        best = distance(*params).argmin(0)  # (B, N)
        b_idx, n_idx = torch.meshgrid(torch.arange(num_bases), torch.arange(n), indexing="ij")
        return [q.detach()[best, b_idx, n_idx] for q in params]


def fit_gd_kernel(
    target: torch.Tensor,
    num_bases: int,
    order: int,
    *,
    sigma_min: float = 0.1,
    trainable: tuple[str, ...] = GEOMETRY_NAMES,
    init: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    restarts: int = 8,
    steps: int = 300,
    lr: float = 0.05,
    polish_steps: int = 100,
    subspace_candidates: int = 32,
    seed: int = 0,
) -> GeometryFit:
    """Geometry and combination weights whose GD kernels best match ``target`` (least squares).

    Args:
        target: ``(out, in, kH, kW)`` free-form weight; ``num_bases`` must divide ``out``.
        num_bases, order, sigma_min: as in :class:`GDConv2d`.
        trainable: the geometry that is fitted; the others stay at ``init``.
        init: raw ``(sigma_raw, mu_raw, theta_raw)`` of shapes ``(B, N, 2), (B, N, 2), (B, N)``; needed
            when ``trainable`` leaves something out, otherwise an extra restart.
        restarts: random starting geometries optimised together (each basis keeps its best).
        steps, lr: Adam steps (cosine-decayed learning rate) on the variable-projection residual.
        subspace_candidates: random geometries per kernel for one extra restart built from the targets'
            best subspace (see :func:`_subspace_start`); 0 disables.
        polish_steps: L-BFGS iterations on the final geometry (0: none).
        seed: seeds the restarts.

    Example:
        >>> fit = fit_gd_kernel(torch.randn(8, 3, 3, 3), num_bases=2, order=2, restarts=2, steps=20, polish_steps=0)
        >>> fit.sigma_raw.shape, fit.weight.shape, 0.0 < fit.kernel_error < 1.0
        (torch.Size([2, 6, 2]), torch.Size([8, 3, 6]), True)
    """
    _check_target(target, num_bases)
    unknown = [t for t in trainable if t not in GEOMETRY_NAMES]
    if unknown:
        raise ValueError(f"trainable must be a subset of {GEOMETRY_NAMES}, got unknown {unknown}")
    if init is None and set(trainable) != set(GEOMETRY_NAMES):
        raise ValueError(f"trainable={tuple(trainable)} fixes some geometry: pass its values through init=")
    if restarts < 1 or steps < 0 or polish_steps < 0:
        raise ValueError(f"restarts must be >= 1 and steps, polish_steps >= 0, got {restarts}, {steps}, {polish_steps}")
    kernel_size = tuple(target.shape[-2:])
    orders = torch.tensor(derivative_orders(order))
    w64 = target.detach().double().cpu()
    rows = _basis_rows(w64, num_bases)
    moment = _target_moment(rows)  # (B, P, P), or the rows (B, R, P) when R < P
    total = float(w64.pow(2).sum().clamp_min(1e-30))

    gen = torch.Generator().manual_seed(seed)
    starts = list(_restart_geometry(restarts, num_bases, order, kernel_size, sigma_min, gen))
    if init is not None:
        for k, (name, value) in enumerate(zip(GEOMETRY_NAMES, init)):
            value = value.detach().double().cpu().unsqueeze(0)
            if name in trainable:  # the given geometry becomes one more restart
                starts[k] = torch.cat([starts[k], value], 0)
            else:
                starts[k] = value
        r = max(s.shape[0] for s in starts)
        starts = [s.expand(r, *s.shape[1:]).clone() for s in starts]
    params = [s.requires_grad_(name in trainable) for name, s in zip(GEOMETRY_NAMES, starts)]

    def residual(sigma_raw: torch.Tensor, mu_raw: torch.Tensor, theta_raw: torch.Tensor) -> torch.Tensor:
        phi = gaussian_derivative_basis(sigma_min + F.softplus(sigma_raw), mu_raw, theta_raw, orders, kernel_size,
                                        order)
        return _projection_residual(phi.flatten(-2), moment, RIDGE) / total  # (R, B)

    if subspace_candidates:
        fixed = [x[0] for x in starts]
        extra = _subspace_start(moment, orders, order, kernel_size, sigma_min, fixed, trainable,
                                subspace_candidates, steps, gen)
        params = [torch.cat([x.detach(), e.detach().unsqueeze(0)], 0).requires_grad_(x.requires_grad)
                  for x, e in zip(params, extra)]
    _adam(params, residual, steps, lr)
    with torch.no_grad():
        best = residual(*params).argmin(0)  # (B,) best restart of every basis
        pick = torch.arange(num_bases)
        geometry = [p.detach()[best, pick].clone().requires_grad_(p.requires_grad) for p in params]

    _polish(geometry, residual, polish_steps)

    with torch.no_grad():
        sigma_raw, mu_raw, theta_raw = (g.detach() for g in geometry)
        phi = gaussian_derivative_basis(sigma_min + F.softplus(sigma_raw), mu_raw, theta_raw, orders, kernel_size,
                                        order)
        weight = combination_lstsq(w64, phi)
        approx = torch.einsum("bjin,bnhw->bjihw", weight.view(num_bases, -1, *weight.shape[1:]), phi)
        err = float(relative_error(approx.reshape(w64.shape), w64))
    dtype = target.dtype
    return GeometryFit(sigma_raw.to(dtype), mu_raw.to(dtype), theta_raw.to(dtype), weight.to(dtype), err)

