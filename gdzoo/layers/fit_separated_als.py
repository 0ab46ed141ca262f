"""Kernel-space fit of the separated combination of eq. (4): alternating least squares on ``λ`` and ``β``.

``W[b·J+j, i] = Σ_n λ[b,j,n] β[b,n,i] φ^{b,n}`` is bilinear in ``(λ, β)``; each half-step is an exact
least-squares solve. Starts from a non-separated fit's geometry (:func:`gdzoo.layers.fit_kernel.fit_gd_kernel`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..kernels import derivative_orders, gaussian_derivative_basis
from .fit_common import RIDGE, _check_target, _polish, relative_error
from .fit_kernel import GeometryFit
from .gd_conv import GEOMETRY_NAMES

__all__ = ["SeparatedFit", "fit_separated"]


@dataclass
class SeparatedFit:
    """Raw geometry and the separated combination ``λ`` (``weight_out``) and ``β`` (``weight_in``) of eq. (4)."""

    sigma_raw: torch.Tensor  # (B, N, 2)
    mu_raw: torch.Tensor  # (B, N, 2)
    theta_raw: torch.Tensor  # (B, N)
    weight_out: torch.Tensor  # (out, N): λ
    weight_in: torch.Tensor  # (B, N, in): β
    kernel_error: float



def _ridge_solve(gram: torch.Tensor, rhs: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """``(G + ρI)⁻¹ rhs`` per basis, ``ρ`` relative to ``G``'s largest diagonal entry
    (bounded when ``G`` is singular)."""
    n = gram.shape[-1]
    lam = ridge * gram.diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(1e-30).detach()
    return torch.linalg.solve(gram + lam[..., None, None] * torch.eye(n, dtype=gram.dtype, device=gram.device), rhs)


def _projections(rows: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """``C[b, j, i, n] = ⟨T[b, j, i], φ^{b,n}⟩``: every target kernel against every basis kernel."""
    return torch.einsum("bjip,bnp->bjin", rows, phi)


def _solve_weight_out(proj: torch.Tensor, phi_gram: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Least-squares ``λ (B, J, N)`` for fixed ``β (B, N, in)``: normal matrix ``(ββᵀ) ∘ (ΦΦᵀ)`` per basis."""
    gram = (beta @ beta.transpose(-1, -2)) * phi_gram
    rhs = torch.einsum("bni,bjin->bnj", beta, proj)
    return _ridge_solve(gram, rhs).transpose(-1, -2)


def _solve_weight_in(proj: torch.Tensor, phi_gram: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Least-squares ``β (B, N, in)`` for fixed ``λ (B, J, N)``: normal matrix ``(λᵀλ) ∘ (ΦΦᵀ)`` per basis."""
    gram = (lam.transpose(-1, -2) @ lam) * phi_gram
    rhs = torch.einsum("bjn,bjin->bni", lam, proj)
    return _ridge_solve(gram, rhs)


def _separated_error(rows: torch.Tensor, lam: torch.Tensor, beta: torch.Tensor, phi: torch.Tensor) -> float:
    """Relative error of eq. (4)'s kernels ``Σ_n λ[b,j,n] β[b,n,i] φ^{b,n}`` against ``rows (B, J, in, P)``."""
    approx = torch.einsum("bjn,bni,bnp->bjip", lam, beta, phi)
    return float(relative_error(approx, rows))


def _alternate(
    rows: torch.Tensor, phi: torch.Tensor, beta: torch.Tensor, sweeps: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Alternating least squares on ``λ`` and ``β`` for a fixed basis: each half-step is an exact
    least-squares solve, so the error never rises (and the first ``λ`` solve already beats ``λ = 0``)."""
    proj, phi_gram = _projections(rows, phi), phi @ phi.transpose(-1, -2)
    lam = _solve_weight_out(proj, phi_gram, beta)
    for _ in range(sweeps):
        beta = _solve_weight_in(proj, phi_gram, lam)
        scale = beta.norm(dim=-1, keepdim=True).clamp_min(1e-30)  # unit β rows: λ carries the scale
        beta = beta / scale
        lam = _solve_weight_out(proj, phi_gram, beta)
    return lam, beta, _separated_error(rows, lam, beta, phi)


def _beta_starts(proj: torch.Tensor, weight: torch.Tensor | None) -> list[torch.Tensor]:
    """Starting ``β (B, N, in)``: the top input singular vector of each ``C[b, :, :, n]`` and, when given, of
    each kernel's non-separated weights ``c[b, :, :, n]`` (the rank-1 split of the unconstrained fit)."""
    mats = [proj.permute(0, 3, 1, 2)]  # (B, N, J, in)
    if weight is not None:
        mats.append(weight)
    return [torch.linalg.svd(m, full_matrices=False)[2][..., 0, :] for m in mats]


def _weight_out_residual(rows: torch.Tensor, beta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """``min_λ ‖T_b − Σ_n λ β φ‖²`` per basis with ``λ`` eliminated (variable projection): ``‖T_b‖² − Σ_j rᵀG⁻¹r``."""
    proj, phi_gram = _projections(rows, phi), phi @ phi.transpose(-1, -2)
    gram = (beta @ beta.transpose(-1, -2)) * phi_gram
    rhs = torch.einsum("bni,bjin->bnj", beta, proj)
    explained = (rhs * _ridge_solve(gram, rhs)).sum((-2, -1))
    return rows.pow(2).sum((1, 2, 3)) - explained



def fit_separated(
    target: torch.Tensor,
    start: GeometryFit,
    order: int,
    *,
    sigma_min: float = 0.1,
    trainable: tuple[str, ...] = GEOMETRY_NAMES,
    sweeps: int = 50,
    polish_steps: int = 100,
) -> SeparatedFit:
    """Separated combination (eq. 4) fitted in kernel space, from a non-separated fit's geometry.

    ``W[b·J+j, i] = Σ_n λ[b,j,n] β[b,n,i] φ^{b,n}`` is bilinear in ``(λ, β)``: alternating least squares
    from two starts (the rank-1 split of ``start.weight`` and of the projections ``⟨T, φ⟩``), then L-BFGS
    on the geometry and ``β`` with ``λ`` eliminated (variable projection), then alternating least squares
    again; the best state is kept. Every ``λ`` is a least-squares solve, so the error is ``≤ 1`` (the
    all-zero weights); the non-separated ``start.kernel_error`` is a lower bound (eq. 4 is a special case).

    Example:
        >>> from gdzoo.layers.fit_kernel import fit_gd_kernel
        >>> w = torch.randn(8, 3, 3, 3)
        >>> sep = fit_separated(w, fit_gd_kernel(w, 2, 2, restarts=2, steps=20, polish_steps=0), 2, polish_steps=0)
        >>> sep.weight_out.shape, sep.weight_in.shape, sep.kernel_error < 1.0
        (torch.Size([8, 6]), torch.Size([2, 6, 3]), True)
    """
    if sweeps < 1 or polish_steps < 0:
        raise ValueError(f"sweeps must be >= 1 and polish_steps >= 0, got {sweeps}, {polish_steps}")
    num_bases, n = start.theta_raw.shape
    _check_target(target, num_bases)
    out, cin, kh, kw = target.shape
    orders = torch.tensor(derivative_orders(order))
    rows = target.detach().double().cpu().reshape(num_bases, out // num_bases, cin, kh * kw)

    def basis(sigma_raw: torch.Tensor, mu_raw: torch.Tensor, theta_raw: torch.Tensor) -> torch.Tensor:
        phi = gaussian_derivative_basis(sigma_min + F.softplus(sigma_raw), mu_raw, theta_raw, orders, (kh, kw), order)
        return phi.flatten(-2)  # (B, N, P)

    def best_als(geometry: list[torch.Tensor], betas: list[torch.Tensor]) -> tuple:
        with torch.no_grad():
            phi = basis(*geometry)
            return min((_alternate(rows, phi, b, sweeps) for b in betas), key=lambda r: r[2])

    geometry = [g.detach().double().cpu() for g in (start.sigma_raw, start.mu_raw, start.theta_raw)]
    with torch.no_grad():
        weight = start.weight.detach().double().cpu().view(num_bases, out // num_bases, cin, n).permute(0, 3, 1, 2)
        betas = _beta_starts(_projections(rows, basis(*geometry)), weight)
    best = (*best_als(geometry, betas), [g.clone() for g in geometry])

    if polish_steps:
        params = [g.clone(memory_format=torch.contiguous_format).requires_grad_(name in trainable)
                  for name, g in zip(GEOMETRY_NAMES, geometry)]
        params.append(best[1].clone(memory_format=torch.contiguous_format).requires_grad_(True))
        total = float(rows.pow(2).sum().clamp_min(1e-30))

        def residual(sigma_raw: torch.Tensor, mu_raw: torch.Tensor, theta_raw: torch.Tensor,
                     beta: torch.Tensor) -> torch.Tensor:
            return _weight_out_residual(rows, beta, basis(sigma_raw, mu_raw, theta_raw)) / total

        _polish(params, residual, polish_steps)
        polished = [p.detach() for p in params[:3]]
        candidate = (*best_als(polished, [params[3].detach()]), polished)
        if candidate[2] < best[2]:
            best = candidate

    lam, beta, err, geometry = best
    if not err <= 1.0:  # cannot happen with exact solves; keeps the promise under round-off or NaN
        lam, beta, err = torch.zeros_like(lam), torch.zeros_like(beta), 1.0
    dtype = target.dtype
    return SeparatedFit(*(g.to(dtype) for g in geometry), lam.reshape(out, n).to(dtype), beta.to(dtype), err)

