"""Fused Triton kernels for the basis of eq. (1): one launch for the forward, one for the backward.

A program computes all ``kH·kW`` taps of a block of kernels ``(b, n)``: σ from the raw parameter
(``σ = σ_min + softplus(raw)``), the rotated and shifted coordinates, and the 1-D Gaussian derivatives by
the recurrence ``G_{k+1}(y; σ) = −(y/σ²) G_k − (k/σ²) G_{k−1}`` (the Hermite form of :mod:`.gaussian`,
multiplied out). The backward program reduces its taps to ``∂/∂raw, ∂/∂μ, ∂/∂θ`` with the identities of
:mod:`.basis` (``∂G_p/∂y = G_{p+1}``, ``∂G_p/∂σ = σ G_{p+2}``). ``TRITON_INTERPRET=1``, set before Python
starts, runs them in Triton's CPU interpreter (how the tests run them without a GPU).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .generator import triton_interpreting

__all__ = ["basis_backward", "basis_forward"]

def _kernels() -> tuple[Any, Any]:
    """The forward and backward kernels (their module imports triton on first use)."""
    from . import _basis_triton_kernels as kernels

    if kernels.INTERPRETED != triton_interpreting():
        raise RuntimeError(
            f"TRITON_INTERPRET is {'1' if triton_interpreting() else 'unset'} now but was not when triton was "
            "imported: set it before Python starts (e.g. `TRITON_INTERPRET=1 python ...`), as Triton reads it once")
    return kernels.forward_kernel, kernels.backward_kernel


def _launch_config(kernels: int, kernel_size: tuple[int, int]) -> tuple[tuple[int], dict[str, int]]:
    """Grid and block sizes: ``BLOCK_T`` covers a kernel's taps, ``BLOCK_K`` kernels per program (≈ 2048 values)."""
    import triton

    taps = triton.next_power_of_2(kernel_size[0] * kernel_size[1])
    rows = min(max(1, 2048 // taps), triton.next_power_of_2(kernels))
    warps = 4 if rows * taps >= 1024 else 2 if rows * taps >= 256 else 1
    return (triton.cdiv(kernels, rows),), {"BLOCK_K": rows, "BLOCK_T": taps, "num_warps": warps}


def _split(value: float) -> tuple[float, float]:
    """``value`` as float32 ``hi + lo`` (Triton passes Python floats as float32; float64 kernels add them back)."""
    hi = float(np.float32(value))
    return hi, float(np.float32(value - hi))


def basis_forward(sigma_raw: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, orders: torch.Tensor,
                  sigma_min: float, kernel_size: tuple[int, int], max_order: int) -> torch.Tensor:
    """``(B, N, kH, kW)`` basis from ``(B, N, 2)`` raw scales and shifts, ``(B, N)`` angles, ``(N, 2)`` orders."""
    forward_kernel, _ = _kernels()
    b, n = theta.shape
    kh, kw = kernel_size
    out = torch.empty(b, n, kh, kw, dtype=sigma_raw.dtype, device=sigma_raw.device)
    if out.numel():
        grid, blocks = _launch_config(b * n, kernel_size)
        forward_kernel[grid](sigma_raw.contiguous(), mu.contiguous(), theta.contiguous(), orders.contiguous(), out,
                             *_split(sigma_min), b * n, n, kh, kw, MAX_ORDER=max_order, **blocks)
    return out


def basis_backward(grad: torch.Tensor, sigma_raw: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor,
                   orders: torch.Tensor, sigma_min: float, kernel_size: tuple[int, int],
                   max_order: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(∂/∂sigma_raw, ∂/∂mu, ∂/∂theta)`` of ``Σ grad · basis``."""
    _, backward_kernel = _kernels()
    b, n = theta.shape
    kh, kw = kernel_size
    grads = (torch.empty_like(sigma_raw), torch.empty_like(mu), torch.empty_like(theta))
    if theta.numel():
        grid, blocks = _launch_config(b * n, kernel_size)
        backward_kernel[grid](grad.to(sigma_raw.dtype).contiguous(), sigma_raw.contiguous(), mu.contiguous(),
                              theta.contiguous(), orders.contiguous(), *grads, *_split(sigma_min), b * n, n, kh, kw,
                              MAX_ORDER=max_order, **blocks)
    return grads
