"""What the kernel-space fits share: the relative error, the target's layout per basis, and the two optimisers
(Adam over batched restarts, an L-BFGS polish that never ends worse)."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["RIDGE", "Residual", "relative_error"]

RIDGE = 1e-8  # ridge of the least-squares solve, relative to the largest basis-Gram diagonal entry


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

