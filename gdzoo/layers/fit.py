"""Fitting a GDConv2d to a pretrained free-form convolution: kernel space, then (optionally) output space.

Why: a Gaussian-derivative layer dropped into a pretrained network (paper, Table 2) should start
from the filters it replaces, not from noise. Two steps:

1. **Kernel space** (:func:`fit_gd_kernel`). For a fixed geometry (σ, μ, θ) the best combination
   weights ``c`` are a linear least-squares solve per basis, so the geometry is optimised with ``c``
   eliminated (variable projection): the residual of basis ``b`` only needs the ``(P, P)`` Gram
   matrix ``M_b = Σ t tᵀ`` of its target kernels (``P = kH·kW`` taps), so one step costs the same
   for 3 or 512 input channels. Several random restarts run batched; each basis keeps its best
   restart, then L-BFGS polishes it.
2. **Output space** (:func:`refine_output_`). Adam on every parameter of the layer (geometry that
   is trainable, combination weights, bias) to match the reference convolution's responses on
   sample images: image statistics weight the taps unequally, which the kernel-space fit ignores.

Errors are relative Frobenius norms (see :class:`FitReport`). :func:`fit_gdconv_` runs both on an
existing :class:`GDConv2d`; ``gdzoo.layers.gdify`` builds the layer from an ``nn.Conv2d``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from ..kernels import derivative_orders, gaussian_derivative_basis
from .gd_conv import GEOMETRY_NAMES, GDConv2d

__all__ = [
    "FitReport",
    "GeometryFit",
    "SeparatedFit",
    "combination_lstsq",
    "fit_gd_kernel",
    "fit_separated",
    "fit_gdconv_",
    "natural_images",
    "output_error",
    "refine_output_",
    "relative_error",
    "subspace_bound",
]

RIDGE = 1e-8  # ridge of the least-squares solve, relative to the largest basis-Gram diagonal entry


@dataclass
class FitReport:
    """How well a GD layer reproduces the free-form convolution it replaces.

    Attributes:
        kernel_error: ``‖W_gd − W‖_F / ‖W‖_F`` over the whole ``(out, in, kH, kW)`` weight.
        kernel_error_per_channel: the same per output channel (``‖W‖`` of that channel).
        subspace_bound: the smallest ``kernel_error`` any ``N``-kernel basis per group of outputs
            could reach (truncated SVD of each basis's targets): a lower bound on ``kernel_error``.
        output_error: ``‖y_gd − y_ref‖_F / ‖y_ref − bias_ref‖_F`` on the sample images after the
            output-space refinement (``None`` without images). Normalised by the bias-free response so
            a large bias cannot hide a wrong filter.
        output_error_kernel_fit: the same right after the kernel-space fit (before refinement).
    """

    kernel_error: float
    kernel_error_per_channel: list[float]
    subspace_bound: float
    output_error: float | None = None
    output_error_kernel_fit: float | None = None
    settings: dict = field(default_factory=dict)

    def summary(self) -> str:
        """One line for logs and model cards."""
        per = self.kernel_error_per_channel
        s = (
            f"kernel rel. error {self.kernel_error:.4f} (per channel median {sorted(per)[len(per) // 2]:.4f}, "
            f"max {max(per):.4f}; subspace bound {self.subspace_bound:.4f})"
        )
        if self.output_error is not None:
            s += f", output rel. error {self.output_error:.4f} (kernel fit alone {self.output_error_kernel_fit:.4f})"
        return s

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GeometryFit:
    """Raw geometry parameters (as stored by GDConv2d) and the least-squares combination weights."""

    sigma_raw: torch.Tensor  # (B, N, 2)
    mu_raw: torch.Tensor  # (B, N, 2)
    theta_raw: torch.Tensor  # (B, N)
    weight: torch.Tensor  # (out, in, N)
    kernel_error: float


def relative_error(approx: torch.Tensor, target: torch.Tensor, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    """``‖approx − target‖_F / ‖target‖_F``, over ``dims`` (all when ``None``).

    Example:
        >>> relative_error(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]))
        tensor(0.7071)
    """
    diff, ref = (approx - target).double(), target.double()
    if dims is None:
        return (diff.norm() / ref.norm().clamp_min(1e-30)).to(target.dtype)
    return (diff.pow(2).sum(dims).sqrt() / ref.pow(2).sum(dims).sqrt().clamp_min(1e-30)).to(target.dtype)


def _check_target(target: torch.Tensor, num_bases: int) -> None:
    if target.dim() != 4:
        raise ValueError(f"target must be a (out, in, kH, kW) weight, got shape {tuple(target.shape)}")
    if target.shape[0] % num_bases:
        raise ValueError(f"num_bases ({num_bases}) must divide the target's out channels ({target.shape[0]})")


def _basis_rows(target: torch.Tensor, num_bases: int) -> torch.Tensor:
    """``(B, out/B · in, P)``: the target kernels served by each basis, flattened."""
    out, cin, kh, kw = target.shape
    return target.reshape(num_bases, (out // num_bases) * cin, kh * kw)


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


def _inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


def _restart_geometry(
    restarts: int, num_bases: int, order: int, kernel_size: tuple[int, int], sigma_min: float, generator: torch.Generator
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
    return _inverse_softplus(sigma - sigma_min), mu, theta


Residual = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _adam(params: list[torch.Tensor], residual: Residual, steps: int, lr: float) -> None:
    """Adam (cosine-decayed ``lr``) on the summed residual of every restart and basis (independent problems)."""
    learn = [p for p in params if p.requires_grad]
    if not learn or steps <= 0:
        return
    opt = torch.optim.Adam(learn, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.01)
    for _ in range(steps):
        opt.zero_grad()
        residual(*params).sum().backward()
        opt.step()
        sched.step()


def _polish(geometry: list[torch.Tensor], residual: Residual, steps: int) -> None:
    """L-BFGS on the chosen geometry; reverted if it ends worse (or NaN)."""
    learn = [g for g in geometry if g.requires_grad]
    if not learn or steps <= 0:
        return
    lbfgs = torch.optim.LBFGS(learn, lr=1.0, max_iter=steps, line_search_fn="strong_wolfe",
                              tolerance_grad=1e-12, tolerance_change=1e-15)

    def closure() -> torch.Tensor:
        lbfgs.zero_grad()
        loss = residual(*geometry).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        before = [g.detach().clone() for g in geometry]
        start = float(residual(*geometry).sum())
    lbfgs.step(closure)
    with torch.no_grad():
        if not float(residual(*geometry).sum()) <= start:
            for g, b in zip(geometry, before):
                g.copy_(b)


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
    own: ``candidates`` random geometries per kernel (σ up to half the kernel size, |μ| up to a quarter), Adam on the relative distance of the kernel to
    the subspace, best candidate kept. Decoupled, this finds the geometry of GD-generated targets
    that the joint, non-convex problem often misses (a kernel stuck on a direction another covers).
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
    starts = [_inverse_softplus(sigma - sigma_min), mu, theta]
    starts = [s if name in trainable else f.expand_as(s).clone() for name, s, f in zip(GEOMETRY_NAMES, starts, fixed)]
    params = [s.requires_grad_(name in trainable) for name, s in zip(GEOMETRY_NAMES, starts)]

    def distance(sigma_raw: torch.Tensor, mu_raw: torch.Tensor, theta_raw: torch.Tensor) -> torch.Tensor:
        phi = gaussian_derivative_basis(sigma_min + F.softplus(sigma_raw), mu_raw, theta_raw, orders, kernel_size, order)
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
        phi = gaussian_derivative_basis(sigma_min + F.softplus(sigma_raw), mu_raw, theta_raw, orders, kernel_size, order)
        return _projection_residual(phi.flatten(-2), moment, RIDGE) / total  # (R, B)

    if subspace_candidates:
        fixed = [x[0] for x in starts]
        extra = _subspace_start(moment, orders, order, kernel_size, sigma_min, fixed, trainable,
                                subspace_candidates, steps, gen)
        params = [torch.cat([x.detach(), e.detach().unsqueeze(0)], 0).requires_grad_(x.requires_grad) for x, e in zip(params, extra)]
    _adam(params, residual, steps, lr)
    with torch.no_grad():
        best = residual(*params).argmin(0)  # (B,) best restart of every basis
        pick = torch.arange(num_bases)
        geometry = [p.detach()[best, pick].clone().requires_grad_(p.requires_grad) for p in params]

    _polish(geometry, residual, polish_steps)

    with torch.no_grad():
        sigma_raw, mu_raw, theta_raw = (g.detach() for g in geometry)
        phi = gaussian_derivative_basis(sigma_min + F.softplus(sigma_raw), mu_raw, theta_raw, orders, kernel_size, order)
        weight = combination_lstsq(w64, phi)
        approx = torch.einsum("bjin,bnhw->bjihw", weight.view(num_bases, -1, *weight.shape[1:]), phi)
        err = float(relative_error(approx.reshape(w64.shape), w64))
    dtype = target.dtype
    return GeometryFit(sigma_raw.to(dtype), mu_raw.to(dtype), theta_raw.to(dtype), weight.to(dtype), err)


@dataclass
class SeparatedFit:
    """Raw geometry and the separated combination ``λ`` (``weight_out``) and ``β`` (``weight_in``) of eq. (4)."""

    sigma_raw: torch.Tensor  # (B, N, 2)
    mu_raw: torch.Tensor  # (B, N, 2)
    theta_raw: torch.Tensor  # (B, N)
    weight_out: torch.Tensor  # (out, N): λ
    weight_in: torch.Tensor  # (B, N, in): β
    kernel_error: float


@contextmanager
def _one_thread() -> Iterator[None]:
    """One intra-op thread for the kernel-space fit: its tensors are tiny, and on a busy CPU more threads
    only spin (gd_vgg16's stem fit: 78 s with 2 threads at load ~5 on 2 cores, 3.8 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _ridge_solve(gram: torch.Tensor, rhs: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """``(G + ρI)⁻¹ rhs`` per basis, ``ρ`` relative to ``G``'s largest diagonal entry (bounded when ``G`` is singular)."""
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


def natural_images(
    n: int, channels: int = 3, size: int | tuple[int, int] = 64, seed: int = 0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Natural-image-like test inputs: 1/f (pink) noise, channels strongly correlated, unit variance.

    Stand-ins for real images when none are given: natural images have a ~1/f amplitude spectrum and
    highly correlated colour channels, which is what weights a filter's taps in output space.

    Example:
        >>> natural_images(2, 3, 32).shape
        torch.Size([2, 3, 32, 32])
    """
    h, w = (size, size) if isinstance(size, int) else size
    gen = torch.Generator().manual_seed(seed)
    fy = torch.fft.fftfreq(h).abs()[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    amp = 1.0 / torch.sqrt(fx**2 + fy**2).clamp_min(1.0 / max(h, w))
    def pink(k: int) -> torch.Tensor:
        noise = torch.randn(n, k, h, w, generator=gen, dtype=torch.float64)
        return torch.fft.irfft2(torch.fft.rfft2(noise) * amp, s=(h, w))
    luminance = pink(1)
    x = luminance + 0.3 * pink(channels)
    x = (x - x.mean(dim=(-2, -1), keepdim=True)) / x.std(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return x.to(dtype)


def output_error(gd: GDConv2d, weight: torch.Tensor, bias: torch.Tensor | None, images: torch.Tensor) -> float:
    """``‖gd(x) − conv_ref(x)‖_F / ‖conv_ref(x) − bias‖_F`` with the reference run with gd's spatial settings."""
    with torch.no_grad():
        ref_nobias = _reference(gd, weight, None, images).double()
        ref = ref_nobias if bias is None else ref_nobias + bias.double().view(1, -1, 1, 1)
        return float((gd(images).double() - ref).norm() / ref_nobias.norm().clamp_min(1e-30))


def _reference(gd: GDConv2d, weight: torch.Tensor, bias: torch.Tensor | None, images: torch.Tensor) -> torch.Tensor:
    spec = gd.conv_spec
    x = images
    padding = spec.padding
    if spec.padding_mode != "zeros":
        x = F.pad(x, spec.explicit_padding(), mode=spec.padding_mode)
        padding = 0
    return F.conv2d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), spec.stride, padding, spec.dilation,
                    gd.groups)


def refine_output_(
    gd: GDConv2d,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    images: torch.Tensor,
    *,
    steps: int = 200,
    lr: float = 3e-3,
    batch_size: int = 8,
    seed: int = 0,
) -> float:
    """Adam on ``gd``'s parameters (those with ``requires_grad``) to match the reference conv on ``images``.

    Minimises ``‖gd(x) − conv(x; weight, bias)‖² / ‖conv(x; weight)‖²`` over mini-batches of ``images``,
    cosine-decayed ``lr``. Returns the relative output error on all ``images`` afterwards (the best
    state seen is kept, so it never ends worse than it started).
    """
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1, got {steps}, {batch_size}")
    params = [p for p in gd.parameters() if p.requires_grad]
    best_err = output_error(gd, weight, bias, images)
    if not params or steps == 0:
        return best_err
    with torch.no_grad():
        targets = _reference(gd, weight, bias, images)
        scale = _reference(gd, weight, None, images).pow(2).mean().clamp_min(1e-30)
    best_state = {k: v.detach().clone() for k, v in gd.state_dict().items()}
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.01)
    gen = torch.Generator().manual_seed(seed)
    was_training = gd.training
    gd.train()
    for step in range(steps):
        idx = torch.randperm(images.shape[0], generator=gen)[:batch_size]
        opt.zero_grad()
        loss = (gd(images[idx]) - targets[idx]).pow(2).mean() / scale
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            err = output_error(gd, weight, bias, images)
            if err < best_err:
                best_err, best_state = err, {k: v.detach().clone() for k, v in gd.state_dict().items()}
    gd.load_state_dict(best_state)
    gd.train(was_training)
    return output_error(gd, weight, bias, images)


def fit_gdconv_(
    gd: GDConv2d,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    images: torch.Tensor | None = None,
    refine_steps: int = 0,
    refine_lr: float = 3e-3,
    restarts: int = 8,
    steps: int = 300,
    polish_steps: int = 100,
    subspace_candidates: int = 32,
    seed: int = 0,
) -> FitReport:
    """Fit ``gd`` in place to the free-form ``weight`` / ``bias`` and report the errors.

    ``weight`` is ``(out, in/groups, kH, kW)``, the layout of the (grouped) ``nn.Conv2d`` it replaces: each
    basis is fitted to the kernels of the outputs it serves (one channel's filter for a depthwise layer
    with one basis per channel).

    Kernel space first (:func:`fit_gd_kernel`; a separated layer then refits ``λ``, ``β`` and the geometry
    for eq. (4) with :func:`fit_separated`), bias copied; then, if
    ``images`` are given and ``refine_steps > 0``, :func:`refine_output_`. ``gd``'s stride, padding,
    dilation and padding mode are used for the output comparison.

    Example:
        >>> conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        >>> gd = GDConv2d(3, 8, 3, padding=1, num_bases=2, order=2)
        >>> report = fit_gdconv_(gd, conv.weight, conv.bias, restarts=2, steps=30, polish_steps=0)
        >>> report.kernel_error < 1.0 and report.subspace_bound <= report.kernel_error + 1e-6
        True
    """
    expected = (gd.out_channels, gd.in_channels // gd.groups, *gd.kernel_size)
    if tuple(weight.shape) != expected:
        raise ValueError(f"weight has shape {tuple(weight.shape)}, the GDConv2d expects {expected}")
    if (bias is None) != (gd.bias is None):
        raise ValueError(f"bias mismatch: reference has {'no ' if bias is None else ''}bias, GDConv2d has "
                         f"{'no ' if gd.bias is None else ''}bias")
    if hasattr(gd, "reparam_conv"):
        raise ValueError("gd was reparameterized (plain conv now): fit a fresh GDConv2d")
    weight, bias = weight.detach(), None if bias is None else bias.detach()
    init = (gd.sigma_raw.detach(), gd.mu_raw.detach(), gd.theta_raw.detach())
    with _one_thread():
        fit = fit_gd_kernel(
            weight.cpu(), gd.num_bases, gd.order, sigma_min=gd.sigma_min, trainable=tuple(gd.trainable),
            init=None if set(gd.trainable) == set(GEOMETRY_NAMES) else tuple(t.cpu() for t in init),
            restarts=restarts, steps=steps, polish_steps=polish_steps, subspace_candidates=subspace_candidates,
            seed=seed,
        )
        if gd.separated:
            fit = fit_separated(weight.cpu(), fit, gd.order, sigma_min=gd.sigma_min, trainable=tuple(gd.trainable),
                                polish_steps=polish_steps)
    with torch.no_grad():
        gd.sigma_raw.copy_(fit.sigma_raw)
        gd.mu_raw.copy_(fit.mu_raw)
        gd.theta_raw.copy_(fit.theta_raw)
        if gd.separated:
            gd.weight_out.copy_(fit.weight_out)
            gd.weight_in.copy_(fit.weight_in)
        else:
            gd.weight.copy_(fit.weight)
        if bias is not None:
            gd.bias.copy_(bias)
    gd._cache = None
    with torch.no_grad():
        dense = gd.dense_weight().to(weight.dtype)
    report = FitReport(
        kernel_error=float(relative_error(dense, weight)),
        kernel_error_per_channel=[float(e) for e in relative_error(dense, weight, dims=(1, 2, 3))],
        subspace_bound=subspace_bound(weight.cpu(), gd.num_bases, gd.num_kernels),
        settings=dict(num_bases=gd.num_bases, order=gd.order, kernel_size=list(gd.kernel_size),
                      separated=gd.separated, restarts=restarts, steps=steps, polish_steps=polish_steps,
                      refine_steps=refine_steps if images is not None else 0),
    )
    if images is not None:
        images = images.to(device=gd.sigma_raw.device, dtype=gd.sigma_raw.dtype)
        report.output_error_kernel_fit = output_error(gd, weight, bias, images)
        report.output_error = report.output_error_kernel_fit
        if refine_steps:
            report.output_error = refine_output_(gd, weight, bias, images, steps=refine_steps, lr=refine_lr, seed=seed)
            with torch.no_grad():
                dense = gd.dense_weight().to(weight.dtype)
            report.kernel_error = float(relative_error(dense, weight))
            report.kernel_error_per_channel = [float(e) for e in relative_error(dense, weight, dims=(1, 2, 3))]
    return report
